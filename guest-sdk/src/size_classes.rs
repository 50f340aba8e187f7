//! The guest's allocator: free lists by size class in front of talc.
//!
//! A transform allocates and frees many small blocks for every event (parsed
//! strings, map entries, output buffers). Profiled under wasmtime, talc's
//! bin search was 13 % of the b2b-portal benchmark. Here a block of at most
//! 4 KiB comes from, and goes back to, the free list of its power-of-two
//! class: a pop or a push. Larger blocks, and the 64 KiB chunks small ones
//! are cut from, come from talc. Freed small blocks stay in their class;
//! an instance's memory never shrinks anyway.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ptr;

/// The smallest class: 16 bytes (room for the free list's link).
const MIN_SHIFT: u32 = 4;
/// The largest class: 4 KiB.
const MAX_SHIFT: u32 = 12;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
const CHUNK: usize = 64 * 1024;

/// Size-class free lists over a backing allocator. Not thread-safe: the
/// guest is single-threaded WebAssembly.
pub struct SizeClasses<A> {
    backing: A,
    /// Head of each class's free list; each free block holds the next's address.
    free: [Cell<*mut u8>; CLASSES],
    /// The uncut rest of the current chunk.
    next: Cell<usize>,
    end: Cell<usize>,
}

// SAFETY: WebAssembly guests without the threads proposal have one thread.
#[cfg(target_arch = "wasm32")]
unsafe impl<A: Sync> Sync for SizeClasses<A> {}

/// The class of a block that fits `layout`, or `None` for a large one.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align());
    if size > 1 << MAX_SHIFT {
        return None;
    }
    let shift = size.next_power_of_two().trailing_zeros().max(MIN_SHIFT);
    Some((shift - MIN_SHIFT) as usize)
}

fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_SHIFT)
}

impl<A: GlobalAlloc> SizeClasses<A> {
    /// Small blocks on free lists, the rest from `backing`.
    pub const fn new(backing: A) -> Self {
        Self {
            backing,
            free: [const { Cell::new(ptr::null_mut()) }; CLASSES],
            next: Cell::new(0),
            end: Cell::new(0),
        }
    }

    /// Pushes a free block of `class`.
    ///
    /// # Safety
    /// `block` is a block of that class (aligned to its size) no one uses.
    unsafe fn push(&self, class: usize, block: *mut u8) {
        // SAFETY: a free block of at least 16 bytes, aligned to its size.
        unsafe { block.cast::<*mut u8>().write(self.free[class].get()) };
        self.free[class].set(block);
    }

    /// Gives the unused span `[from, to)` (16-byte aligned ends) to the free
    /// lists as the largest aligned blocks that fit.
    ///
    /// # Safety
    /// The span is memory of a chunk no one uses.
    unsafe fn give_back(&self, mut from: usize, to: usize) {
        while from < to {
            let class = (0..CLASSES)
                .rev()
                .find(|&c| from.is_multiple_of(class_size(c)) && from + class_size(c) <= to)
                .expect("spans are 16-byte aligned");
            // SAFETY: an unused, aligned piece of the span.
            unsafe { self.push(class, from as *mut u8) };
            from += class_size(class);
        }
    }

    /// Cuts a new block of `class` from the current chunk, or a new chunk.
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    unsafe fn cut(&self, class: usize) -> *mut u8 {
        let size = class_size(class);
        let mut start = self.next.get().next_multiple_of(size);
        if self.next.get() == 0 || start + size > self.end.get() {
            // SAFETY: a valid non-zero layout.
            let chunk = unsafe {
                self.backing
                    .alloc(Layout::from_size_align_unchecked(CHUNK, 1 << MAX_SHIFT))
            };
            if chunk.is_null() {
                return ptr::null_mut();
            }
            if self.next.get() != 0 {
                // SAFETY: the old chunk's uncut rest.
                unsafe { self.give_back(self.next.get(), self.end.get()) };
            }
            self.next.set(chunk as usize);
            self.end.set(chunk as usize + CHUNK);
            start = chunk as usize;
        }
        // SAFETY: the padding before `start` is uncut memory of this chunk.
        unsafe { self.give_back(self.next.get(), start) };
        self.next.set(start + size);
        start as *mut u8
    }
}

// SAFETY: small blocks are disjoint pieces of chunks the backing allocator
// gave out and never takes back, each aligned to its class size (at least
// the layout's size and alignment); a freed block is only handed out again
// after it is popped from its list. Large blocks are the backing's own.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SizeClasses<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: the caller's layout.
            return unsafe { self.backing.alloc(layout) };
        };
        let head = self.free[class].get();
        if head.is_null() {
            // SAFETY: as this function.
            return unsafe { self.cut(class) };
        }
        // SAFETY: a free block holds the next free block's address.
        self.free[class].set(unsafe { head.cast::<*mut u8>().read() });
        head
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: the caller gives back a block this allocator made for `layout`.
            Some(class) => unsafe { self.push(class, block) },
            None => unsafe { self.backing.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` rounded to the alignment fits.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: a large block of the backing's.
            (None, None) => unsafe { self.backing.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: as `alloc` and `dealloc`; the two blocks are distinct.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    /// A block, its layout, and the byte it was filled with.
    struct Live {
        block: *mut u8,
        layout: Layout,
        fill: u8,
    }

    fn check(live: &Live) {
        // SAFETY: a live block of `layout.size()` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(live.block, live.layout.size()) };
        assert!(bytes.iter().all(|b| *b == live.fill), "a block was overwritten");
    }

    #[test]
    fn classes_round_up_to_powers_of_two_and_large_blocks_have_none() {
        let layout = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(8, 64)), Some(2));
        assert_eq!(class_of(layout(4096, 1)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(4097, 1)), None);
        assert_eq!(class_of(layout(8, 8192)), None);
    }

    #[test]
    fn random_allocations_are_aligned_disjoint_and_survive_reallocation() {
        let alloc = SizeClasses::new(System);
        let mut live: Vec<Live> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        for step in 0..20_000u32 {
            match random(10) {
                0..=4 => {
                    let size = match random(4) {
                        0 => 1 + random(16),
                        1 => 1 + random(512),
                        2 => 1 + random(4096),
                        _ => 1 + random(20_000),
                    } as usize;
                    let align = 1usize << random(8);
                    let layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: a non-zero layout.
                    let block = unsafe { alloc.alloc(layout) };
                    assert!(!block.is_null());
                    assert!((block as usize).is_multiple_of(align), "{size} bytes at {align}");
                    let fill = step as u8;
                    // SAFETY: a fresh block of `size` bytes.
                    unsafe { ptr::write_bytes(block, fill, size) };
                    live.push(Live { block, layout, fill });
                }
                5..=7 if !live.is_empty() => {
                    let gone = live.swap_remove(random(live.len() as u64) as usize);
                    check(&gone);
                    // SAFETY: a live block with its layout.
                    unsafe { alloc.dealloc(gone.block, gone.layout) };
                }
                _ if !live.is_empty() => {
                    let at = random(live.len() as u64) as usize;
                    let old = &live[at];
                    check(old);
                    let new_size = 1 + random(6000) as usize;
                    // SAFETY: a live block with its layout.
                    let block = unsafe { alloc.realloc(old.block, old.layout, new_size) };
                    let kept = old.layout.size().min(new_size);
                    // SAFETY: the moved block keeps the first `kept` bytes.
                    let bytes = unsafe { std::slice::from_raw_parts(block, kept) };
                    assert!(bytes.iter().all(|b| *b == old.fill), "realloc lost bytes");
                    // SAFETY: the block has `new_size` bytes now.
                    unsafe { ptr::write_bytes(block, old.fill, new_size) };
                    let layout = Layout::from_size_align(new_size, old.layout.align()).unwrap();
                    live[at] = Live {
                        block,
                        layout,
                        fill: old.fill,
                    };
                }
                _ => {}
            }
        }
        for block in &live {
            check(block);
        }
    }

    #[test]
    fn a_freed_block_is_reused_and_growing_within_a_class_stays_in_place() {
        let alloc = SizeClasses::new(System);
        let layout = Layout::from_size_align(40, 8).unwrap();
        // SAFETY: non-zero layouts; blocks given back with their layouts.
        unsafe {
            let first = alloc.alloc(layout);
            alloc.dealloc(first, layout);
            assert_eq!(alloc.alloc(layout), first);
            assert_eq!(alloc.realloc(first, layout, 64), first);
        }
    }
}
