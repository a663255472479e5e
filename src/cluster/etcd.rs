//! The part of etcd's v3 API a router uses, as plain data: requests a
//! [`super::member::Member`] asks to be carried out and the responses and
//! watch events it is fed. The control-plane thread carries them out with
//! the etcd client; the simulation with its fake etcd (`sim::etcd`), which
//! keeps etcd's rules (revisions, leases, transactions, watches).

/// An etcd lease id.
pub type LeaseId = i64;

/// A key and its value as etcd stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    /// The revision that created the key (since its last deletion).
    pub create_revision: i64,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: LeaseId,
}

/// A condition of a transaction on one key (etcd's `Compare`, `EQUAL`).
/// A key that does not exist has revision 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    CreateRevision { key: String, equals: i64 },
    ModRevision { key: String, equals: i64 },
}

/// An operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: String,
        lease: LeaseId,
    },
    Delete {
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A new lease of `ttl_ms` (etcd counts in whole seconds: rounded up).
    LeaseGrant {
        ttl_ms: u64,
    },
    /// One keep-alive of `lease`.
    LeaseKeepAlive {
        lease: LeaseId,
    },
    LeaseRevoke {
        lease: LeaseId,
    },
    /// Every key under `prefix`, and the store's revision.
    RangePrefix {
        prefix: String,
    },
    /// If every compare holds, `success`, else nothing.
    Txn {
        compares: Vec<Compare>,
        success: Vec<Op>,
    },
    /// Events under `prefix` from `start_revision` on, until the watch
    /// fails (then [`Response::Failed`] for this request id).
    Watch {
        prefix: String,
        start_revision: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    LeaseGranted {
        lease: LeaseId,
        ttl_ms: u64,
    },
    /// `ttl_ms` 0: the lease is gone (expired or revoked).
    KeptAlive {
        ttl_ms: u64,
    },
    Revoked,
    Range {
        revision: i64,
        kvs: Vec<Kv>,
    },
    Txn {
        succeeded: bool,
        revision: i64,
    },
    /// Events of a watch, in revision order.
    Events(Vec<Event>),
    /// The request failed (etcd unreachable, a timeout, the watch ended,
    /// the revision compacted): the member retries as it sees fit.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    /// The key's last state and the revision of its deletion.
    Delete {
        key: String,
        revision: i64,
    },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> i64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}
