//! A [`ClusterNode`] over std TCP sockets, driven by polling: for tests,
//! tools and simple nodes (a node with a runtime of its own drives the
//! core from it instead). [`Node::step`] moves every socket's bytes, runs
//! the timers and returns what the application gets.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{ClusterConfig, ClusterNode, LinkId, Outcome, Polled};
use crate::client::core::Incoming;
use crate::time::{Clock, Time};
use crate::wire::fb;

/// What the application received, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Deliver {
        /// The router it came through (its id in the map).
        router: Option<u64>,
        message_id: u64,
        origin: u64,
        to_user: String,
        devices: Vec<String>,
        payload: Vec<u8>,
    },
    Kick {
        user: String,
        device: String,
    },
    /// A change of the cluster's membership (each once).
    NodeEvent {
        seq: u64,
        kind: fb::NodeEventKind,
        node: String,
        incarnation: u64,
        senior: String,
    },
    /// A router closed its connection with an Error frame.
    RouterError {
        router: String,
        text: String,
    },
}

/// See the module docs.
pub struct Node {
    pub core: ClusterNode,
    clock: Clock,
    sockets: HashMap<LinkId, TcpStream>,
    buffer: Vec<u8>,
    /// Router addresses cut off (see [`Node::cut`]), and the sockets to
    /// them held open meanwhile.
    cut: HashSet<String>,
    held: Vec<TcpStream>,
}

impl Node {
    pub fn new(config: ClusterConfig) -> Node {
        Node {
            core: ClusterNode::new(config),
            clock: Clock::new(),
            sockets: HashMap::new(),
            buffer: vec![0; 64 * 1024],
            cut: HashSet::new(),
            held: Vec::new(),
        }
    }

    /// Cuts the path to the router at `addr` (true) or heals it (false),
    /// as a partition would: while cut, no byte moves on its socket (which
    /// stays open: the router hears nothing, it is not told), and
    /// connecting to it fails. The node core finds the router silent and
    /// gives the link up as usual; healed, the held sockets close and the
    /// link reconnects (resuming its stream if the router still has it).
    pub fn cut(&mut self, addr: &str, cut: bool) {
        if cut {
            self.cut.insert(addr.to_owned());
        } else {
            self.cut.remove(addr);
            self.held.clear();
        }
    }

    pub fn now(&self) -> Time {
        self.clock.now()
    }

    /// Live links (a socket and a Welcome).
    pub fn live_links(&self) -> usize {
        self.core.links().filter(|(_, link)| link.is_live()).count()
    }

    /// One round: connects what is due, writes, reads, runs timers.
    /// Returns what the application received and the outcomes decided.
    pub fn step(&mut self) -> (Vec<Received>, Vec<Outcome>) {
        let now = self.clock.now();
        for (link, addr) in self.core.connect_due(now) {
            let reachable = !self.cut.contains(&addr);
            match connect(&addr).filter(|_| reachable) {
                Some(stream) => {
                    self.sockets.insert(link, stream);
                    self.core.connected(link, now);
                }
                None => self.core.connect_failed(link, now),
            }
        }
        // Sockets of links the core dropped.
        let core = &mut self.core;
        self.sockets
            .retain(|&link, _| core.link_mut(link).is_some());
        let mut received = Vec::new();
        let links: Vec<LinkId> = self.sockets.keys().copied().collect();
        for link in links {
            // A router silent for three heartbeats is dead (or the path to
            // it is): a new connection resumes the stream if it can.
            let silent = self
                .core
                .link_mut(link)
                .is_some_and(|link| link.core.router_silent(now));
            let cut = self
                .core
                .link_mut(link)
                .is_some_and(|link| self.cut.contains(&link.addr));
            if silent && cut {
                self.held.extend(self.sockets.remove(&link));
                self.core.disconnected(link, now);
            } else if cut {
                // Nothing moves.
            } else if silent || !self.pump(link, now, &mut received) {
                self.sockets.remove(&link);
                self.core.disconnected(link, now);
            }
        }
        if self.core.poll_timeout() <= now {
            self.core.handle_timeout(now);
        }
        let mut outcomes = Vec::new();
        while let Some(outcome) = self.core.poll_outcome() {
            outcomes.push(outcome);
        }
        (received, outcomes)
    }

    /// Moves link `id`'s bytes; false when its socket ended.
    fn pump(&mut self, id: LinkId, now: Time, received: &mut Vec<Received>) -> bool {
        let Some(stream) = self.sockets.get_mut(&id) else {
            return false;
        };
        let Some(link) = self.core.link_mut(id) else {
            return false;
        };
        loop {
            let bytes = link.core.transmit();
            if bytes.is_empty() {
                break;
            }
            match stream.write(bytes) {
                Ok(0) => return false,
                Ok(n) => link.core.transmitted(n),
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        loop {
            match stream.read(&mut self.buffer) {
                Ok(0) => return false,
                Ok(n) => link.core.receive(&self.buffer[..n], now),
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        let router = link.addr.clone();
        let router_id = link.router;
        while let Some(polled) = self.core.poll_link(id, now) {
            match polled {
                Err(error) => {
                    received.push(Received::RouterError {
                        router,
                        text: error.to_string(),
                    });
                    return false;
                }
                Ok(Polled::Frame(Incoming::Deliver(deliver))) => received.push(Received::Deliver {
                    router: router_id,
                    message_id: deliver.message_id(),
                    origin: deliver.origin(),
                    to_user: deliver.to_user().unwrap_or("").to_owned(),
                    devices: deliver
                        .devices()
                        .map(|d| d.iter().map(str::to_owned).collect())
                        .unwrap_or_default(),
                    payload: deliver
                        .payload()
                        .map(|p| p.bytes().to_vec())
                        .unwrap_or_default(),
                }),
                Ok(Polled::Frame(Incoming::NodeEvent(event))) => {
                    received.push(Received::NodeEvent {
                        seq: event.seq(),
                        kind: event.kind(),
                        node: event.node().unwrap_or("").to_owned(),
                        incarnation: event.incarnation(),
                        senior: event.senior().unwrap_or("").to_owned(),
                    })
                }
                Ok(Polled::Frame(Incoming::Kick(kick))) => received.push(Received::Kick {
                    user: kick.user().unwrap_or("").to_owned(),
                    device: kick.device().unwrap_or("").to_owned(),
                }),
                Ok(Polled::Frame(Incoming::Error { text, .. })) => {
                    received.push(Received::RouterError {
                        router,
                        text: text.to_owned(),
                    });
                    return false;
                }
                Ok(_) => {}
            }
        }
        // What the frames just handled queued (Acks, Pongs, resyncs).
        let Some(link) = self.core.link_mut(id) else {
            return false;
        };
        loop {
            let bytes = link.core.transmit();
            if bytes.is_empty() {
                return true;
            }
            match stream.write(bytes) {
                Ok(0) => return false,
                Ok(n) => link.core.transmitted(n),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }

    /// Steps until `done` says so or `timeout` passes; returns whether
    /// `done` did.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Node, Vec<Received>, Vec<Outcome>) -> bool,
    ) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let (received, outcomes) = self.step();
            if done(self, received, outcomes) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}

fn connect(addr: &str) -> Option<TcpStream> {
    let addr = addr.to_socket_addrs().ok()?.next()?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_nonblocking(true).ok()?;
    stream.set_nodelay(true).ok()?;
    Some(stream)
}
