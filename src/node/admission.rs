//! Admission of sockets before they are node connections: a router-wide
//! bound on sockets (`--max-connections`) and a bound per source address
//! (`--max-connections-per-source`), both counted from the accept to the
//! close, whichever shard serves the socket by then.
//!
//! Touched only when a socket is accepted or closed, never per frame: a
//! mutex-guarded map is enough. The other half of admission, per shard, is
//! in `serve`: at most `--max-handshakes-per-shard` sockets wait for their
//! Hello, and a new one evicts the one that has waited longest (so a flood
//! of silent sockets cannot lock real nodes out), and the Hello itself is
//! read with a cap of its own (`HELLO_BYTES_MAX`), not `--max-frame-bytes`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The router-wide counts. See the module docs.
#[derive(Debug)]
pub struct Admission {
    total: AtomicUsize,
    total_max: usize,
    per_source_max: usize,
    sources: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a socket was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` sockets are open.
    RouterFull,
    /// `--max-connections-per-source` sockets from this address are open.
    SourceFull,
}

/// A socket's place, given back when dropped (with the socket).
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    pub fn new(total_max: usize, per_source_max: usize) -> Arc<Admission> {
        Arc::new(Admission {
            total: AtomicUsize::new(0),
            total_max,
            per_source_max,
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a socket from `source`.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refusal> {
        let mut sources = self.sources.lock().expect("admission lock");
        if self.total.load(Ordering::Relaxed) >= self.total_max {
            return Err(Refusal::RouterFull);
        }
        let count = sources.entry(source).or_insert(0);
        if *count >= self.per_source_max {
            return Err(Refusal::SourceFull);
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            admission: self.clone(),
            source,
        })
    }

    /// Sockets holding a place now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut sources = self.admission.sources.lock().expect("admission lock");
        if let Some(count) = sources.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                // The map holds only addresses with open sockets: it is
                // bounded by the sockets, not by every address ever seen.
                sources.remove(&self.source);
            }
        }
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_source_and_in_total_and_given_back() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refusal::SourceFull);
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refusal::RouterFull);
        drop(first);
        assert_eq!(admission.open(), 2);
        let _again = admission.admit(b).unwrap();
        assert_eq!(admission.sources.lock().unwrap().len(), 2);
    }
}
