//! Distributed locks: a [`Claim`](super::claim::Claim) with a random value, taken with bounded
//! waiting, released by compare-and-delete — and fencing: a write guarded by a lock is one
//! script that checks the lock still holds our value and writes, so a replica that stalled past
//! its lease (GC pause, network partition, SIGSTOP) can never overwrite what the next holder
//! wrote.

/// A held lock: a claim that is never settled. Dropping it without
/// [`release`](super::claim::Claim::release) lets the lease expire.
pub type Lock = super::claim::Claim;
