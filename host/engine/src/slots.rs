//! Instance slots: at most as many live instances as the pooling allocator
//! was sized for. A caller that finds none free waits for one, so a full
//! pool slows callers down and never fails an event.

use std::sync::{Arc, Condvar, Mutex};

/// A counting semaphore for blocking threads.
#[derive(Debug)]
pub(crate) struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// One taken slot; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Slots {
    pub(crate) fn new(count: usize) -> Self {
        Self {
            free: Mutex::new(count),
            freed: Condvar::new(),
        }
    }

    /// Takes a slot, waiting until one is free.
    pub(crate) fn take(self: &Arc<Self>) -> Slot {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self.clone())
    }
}

impl Slots {
    /// Takes a slot if one is free now.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        (*free > 0).then(|| {
            *free -= 1;
            Slot(self.clone())
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_taker_waits_until_a_slot_is_given_back() {
        let slots = Arc::new(Slots::new(1));
        let held = slots.take();
        let waiter = {
            let slots = slots.clone();
            std::thread::spawn(move || drop(slots.take()))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "no slot was free");
        drop(held);
        waiter.join().unwrap();
    }
}
