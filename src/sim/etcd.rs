//! A fake etcd for the simulation: one store with etcd's rules as a
//! router sees them. Every change gets the next revision (all the
//! operations of one transaction share it); a key remembers the revision
//! that created it and the one that last changed it; a lease expires `ttl`
//! after the last keep-alive it received, deleting its keys (one revision);
//! a watch sends every event under its prefix from its start revision on,
//! in order. Time is the simulation's; TTLs are kept in milliseconds
//! (real etcd rounds them up to whole seconds).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::cluster::etcd::{Compare, Event, Kv, LeaseId, Op, Request, Response};
use crate::time::Time;

/// Who asked: a client (a router) and its request id.
pub type Asker = (usize, u64);

struct Watch {
    asker: Asker,
    prefix: String,
    /// The next revision to send.
    next: i64,
}

#[derive(Default)]
pub struct FakeEtcd {
    revision: i64,
    kvs: BTreeMap<String, Kv>,
    /// Lease -> (TTL, expiry).
    leases: HashMap<LeaseId, (u64, Time)>,
    next_lease: LeaseId,
    history: Vec<Event>,
    watches: Vec<Watch>,
}

impl FakeEtcd {
    pub fn new() -> FakeEtcd {
        FakeEtcd {
            // Lease ids that look like etcd's (large, not sequential-looking
            // in hex) so that nothing depends on small ids.
            next_lease: 0x694d_0000_0000_0001,
            ..FakeEtcd::default()
        }
    }

    pub fn get(&self, key: &str) -> Option<&Kv> {
        self.kvs.get(key)
    }

    /// Carries out `request` at `now`. A Watch answers with the events it
    /// already has (maybe none) and goes on through [`FakeEtcd::watch_events`].
    pub fn request(&mut self, asker: Asker, request: Request, now: Time) -> Response {
        self.expire(now);
        match request {
            Request::LeaseGrant { ttl_ms } => {
                let lease = self.next_lease;
                self.next_lease += 0x1_0001;
                self.leases
                    .insert(lease, (ttl_ms, now + Duration::from_millis(ttl_ms)));
                Response::LeaseGranted { lease, ttl_ms }
            }
            Request::LeaseKeepAlive { lease } => match self.leases.get_mut(&lease) {
                Some((ttl_ms, expiry)) => {
                    *expiry = now + Duration::from_millis(*ttl_ms);
                    Response::KeptAlive { ttl_ms: *ttl_ms }
                }
                None => Response::KeptAlive { ttl_ms: 0 },
            },
            Request::LeaseRevoke { lease } => {
                self.revoke(lease);
                Response::Revoked
            }
            Request::RangePrefix { prefix } => Response::Range {
                revision: self.revision,
                kvs: self
                    .kvs
                    .range(prefix.clone()..)
                    .take_while(|(key, _)| key.starts_with(&prefix))
                    .map(|(_, kv)| kv.clone())
                    .collect(),
            },
            Request::Txn { compares, success } => {
                let holds = compares.iter().all(|compare| match compare {
                    Compare::CreateRevision { key, equals } => {
                        self.kvs.get(key).map_or(0, |kv| kv.create_revision) == *equals
                    }
                    Compare::ModRevision { key, equals } => {
                        self.kvs.get(key).map_or(0, |kv| kv.mod_revision) == *equals
                    }
                });
                let leases_alive = success.iter().all(|op| match op {
                    Op::Put { lease, .. } => *lease == 0 || self.leases.contains_key(lease),
                    Op::Delete { .. } => true,
                });
                if !leases_alive {
                    return Response::Failed("lease not found".into());
                }
                if holds && !success.is_empty() {
                    self.revision += 1;
                    for op in success {
                        self.apply(op);
                    }
                }
                Response::Txn {
                    succeeded: holds,
                    revision: self.revision,
                }
            }
            Request::Watch {
                prefix,
                start_revision,
            } => {
                self.watches.push(Watch {
                    asker,
                    prefix,
                    next: start_revision,
                });
                Response::Events(Vec::new())
            }
        }
    }

    fn apply(&mut self, op: Op) {
        let revision = self.revision;
        match op {
            Op::Put { key, value, lease } => {
                let create_revision = self.kvs.get(&key).map_or(revision, |kv| kv.create_revision);
                let kv = Kv {
                    key: key.clone(),
                    value,
                    create_revision,
                    mod_revision: revision,
                    lease,
                };
                self.history.push(Event::Put(kv.clone()));
                self.kvs.insert(key, kv);
            }
            Op::Delete { key } => {
                if self.kvs.remove(&key).is_some() {
                    self.history.push(Event::Delete { key, revision });
                }
            }
        }
    }

    fn revoke(&mut self, lease: LeaseId) {
        if self.leases.remove(&lease).is_none() {
            return;
        }
        let keys: Vec<String> = self
            .kvs
            .values()
            .filter(|kv| kv.lease == lease)
            .map(|kv| kv.key.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        self.revision += 1;
        for key in keys {
            self.apply(Op::Delete { key });
        }
    }

    /// Expires the leases whose time is up.
    pub fn expire(&mut self, now: Time) {
        let mut expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, expiry))| now >= *expiry)
            .map(|(&lease, _)| lease)
            .collect();
        expired.sort_unstable();
        for lease in expired {
            self.revoke(lease);
        }
    }

    /// The earliest lease expiry.
    pub fn next_expiry(&self) -> Option<Time> {
        self.leases.values().map(|(_, expiry)| *expiry).min()
    }

    /// Events due to each watch since it last heard.
    pub fn watch_events(&mut self) -> Vec<(Asker, Vec<Event>)> {
        let mut out = Vec::new();
        for watch in &mut self.watches {
            let start = self
                .history
                .partition_point(|event| event.revision() < watch.next);
            let events: Vec<Event> = self.history[start..]
                .iter()
                .filter(|event| event.key().starts_with(&watch.prefix))
                .cloned()
                .collect();
            if let Some(last) = events.last() {
                watch.next = last.revision() + 1;
                out.push((watch.asker, events));
            }
        }
        out
    }

    /// Ends the watches of `client` (or every client), returning them.
    pub fn take_watches(&mut self, client: Option<usize>) -> Vec<Asker> {
        let mut taken = Vec::new();
        self.watches.retain(|watch| {
            let take = client.is_none_or(|c| watch.asker.0 == c);
            if take {
                taken.push(watch.asker);
            }
            !take
        });
        taken
    }
}
