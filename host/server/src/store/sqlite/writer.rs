//! The group-commit writer: one thread owns the write connection and
//! commits every request waiting at the time in one transaction, so a burst
//! of ingests pays one fsync. Each request runs in its own savepoint: one
//! that fails rolls back alone, and every caller hears only after the
//! commit (or its failure).

use std::sync::mpsc::{Receiver, sync_channel};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::store::StoreError;

/// Most requests committed together.
const GROUP_LIMIT: usize = 1024;

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A request to the writer: the work, run inside the group's transaction,
/// returns how to answer once the group is committed; `fail` answers when
/// the transaction could not even begin.
pub(super) struct Job {
    work: Box<dyn FnOnce(&mut Transaction) -> Reply + Send>,
    fail: Box<dyn FnOnce(String) + Send>,
}

impl Job {
    /// A request running `work` in its own savepoint of the next group; the
    /// answer (its result once the group is committed) arrives on the
    /// returned channel.
    pub(super) fn new<T: Send + 'static>(
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> (Self, Receiver<Result<T, StoreError>>) {
        let (reply, answer) = sync_channel(1);
        let failed = reply.clone();
        let fail = Box::new(move |message: String| {
            let _ = failed.send(Err(StoreError::Commit(message)));
        });
        let work = Box::new(move |transaction: &mut Transaction| -> Reply {
            let result = match transaction.savepoint() {
                Ok(mut savepoint) => {
                    let result = work(&savepoint);
                    if result.is_err() {
                        let _ = savepoint.rollback();
                    }
                    result.and_then(|value| savepoint.commit().map(|()| value).map_err(StoreError::from))
                }
                Err(err) => Err(err.into()),
            };
            Box::new(move |committed: Result<(), String>| {
                let _ = reply.send(committed.map_err(StoreError::Commit).and(result));
            })
        });
        (Self { work, fail }, answer)
    }
}

/// The writer thread's loop: takes the waiting requests, commits them together.
pub(super) fn write_loop(mut connection: Connection, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_LIMIT {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut transaction = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(transaction) => transaction,
            Err(err) => {
                for job in group {
                    (job.fail)(format!("cannot begin a transaction: {err}"));
                }
                continue;
            }
        };
        let replies: Vec<Reply> = group
            .into_iter()
            .map(|job| (job.work)(&mut transaction))
            .collect();
        let committed = transaction.commit().map_err(|err| err.to_string());
        for reply in replies {
            reply(committed.clone());
        }
    }
}
