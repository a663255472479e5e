//! A node connection over a blocking socket, driven by a [`NodeCore`]:
//! for one-shot commands such as `imrouter locate`, and for tests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::time::{Clock, Time};

use super::core::{Incoming, NodeConfig, NodeCore, State};

/// One session in a Located answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedSession {
    pub node: String,
    pub device: String,
    pub platform: String,
}

/// A blocking connection to a router.
pub struct Connection {
    pub stream: TcpStream,
    pub core: NodeCore,
    clock: Clock,
    /// The router closed the connection.
    closed: bool,
}

impl Connection {
    /// Connects and sends the Hello; every read waits at most `timeout`.
    /// Does not wait for the Welcome (see [`Connection::handshake`]).
    pub fn open(
        router: SocketAddr,
        config: NodeConfig,
        timeout: Duration,
    ) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&router, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let clock = Clock::new();
        let mut core = NodeCore::new(config);
        core.connect(clock.now());
        let mut connection = Connection {
            stream,
            core,
            clock,
            closed: false,
        };
        connection.flush()?;
        Ok(connection)
    }

    /// Connects and waits for the Welcome.
    pub fn connect(
        router: SocketAddr,
        config: NodeConfig,
        timeout: Duration,
    ) -> io::Result<Connection> {
        let mut connection = Connection::open(router, config, timeout)?;
        connection.handshake()?;
        Ok(connection)
    }

    /// Waits for the Welcome (an Error instead is an error).
    pub fn handshake(&mut self) -> io::Result<()> {
        self.recv(|incoming| match incoming {
            Incoming::Welcome { .. } => Some(()),
            _ => None,
        })
    }

    pub fn now(&self) -> Time {
        self.clock.now()
    }

    /// Writes what the core has queued.
    pub fn flush(&mut self) -> io::Result<()> {
        let bytes = self.core.take_transmit();
        self.stream.write_all(&bytes)
    }

    /// Reads once from the socket into the core; `false` at end of file.
    pub fn read_some(&mut self) -> io::Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let read = match self.stream.read(self.core.read_buffer(64 * 1024)) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(error) => return Err(error),
        };
        if read == 0 {
            self.closed = true;
            return Ok(false);
        }
        let now = self.clock.now();
        self.core.filled(read, now);
        Ok(true)
    }

    /// Hands frames to `pick` (flushing Pongs and Acks as it goes) until it
    /// returns a value. An Error frame, a protocol error or a close ends
    /// it with an error.
    pub fn recv<T>(&mut self, mut pick: impl FnMut(Incoming<'_>) -> Option<T>) -> io::Result<T> {
        loop {
            while let Some(incoming) = self.core.poll_incoming() {
                let incoming =
                    incoming.map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                if let Incoming::Error { code, text } = incoming {
                    return Err(io::Error::other(format!(
                        "the router refused: {text} ({})",
                        code.variant_name().unwrap_or("unknown code")
                    )));
                }
                if let Some(value) = pick(incoming) {
                    self.flush()?;
                    return Ok(value);
                }
            }
            self.flush()?;
            if !self.read_some()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the router closed the connection",
                ));
            }
        }
    }

    /// Asks where `user` is connected.
    pub fn locate(&mut self, user: &str) -> io::Result<Vec<LocatedSession>> {
        let query_id = self.core.next_message_id();
        self.core.locate(query_id, user);
        self.flush()?;
        self.recv(|incoming| {
            let Incoming::Located(located) = incoming else {
                return None;
            };
            if located.query_id() != query_id {
                return None;
            }
            Some(
                located
                    .sessions()
                    .map(|sessions| {
                        sessions
                            .iter()
                            .map(|session| LocatedSession {
                                node: session.node().unwrap_or("").to_string(),
                                device: session.device().unwrap_or("").to_string(),
                                platform: session
                                    .platform()
                                    .variant_name()
                                    .unwrap_or("Other")
                                    .to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
    }

    /// Says Goodbye and reads until the router closes.
    pub fn goodbye(mut self, reason: &str) -> io::Result<()> {
        self.core.goodbye(reason);
        self.flush()?;
        while self.read_some()? {
            while let Some(incoming) = self.core.poll_incoming() {
                if incoming.is_err() {
                    break;
                }
            }
            self.flush()?;
        }
        Ok(())
    }

    /// Whether the router closed the connection (or the core failed).
    pub fn is_closed(&self) -> bool {
        self.closed || self.core.state() == State::Failed
    }
}

/// A random incarnation for a process start (time and process id).
pub fn fresh_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |t| t.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32
}
