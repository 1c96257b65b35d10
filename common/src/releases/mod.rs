//! Mini-program fleet releases (protocol.md §8): one template committed, audited and released
//! across many mini programs as one tracked job.
//!
//! * [`spec`] — what a job is asked to do, checked before anything is stored.
//! * [`account`] — each account's state machine and the intent that makes each WeChat call
//!   happen once.
//! * [`store`] — jobs in Redis: every change of an account one compare-and-set script.
//!
//! The `releases` role (`workers releases`) runs the jobs; the admin API creates and steers
//! them (docs/releases.md).

pub mod account;
pub mod spec;
pub mod store;

pub use account::{AccountRecord, AccountState, Call, Intent};
pub use spec::{ReleaseMode, ReleaseSpec, SpecError, Targets};
pub use store::{AuditResult, Job, JobStatus, ReleaseStore, Reserved};
