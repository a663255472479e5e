//! A minimal blocking node client, for one-shot commands such as
//! `imrouter locate`: connect, Hello, one request, Goodbye. It speaks the
//! protocol with the same `wire` code as the router.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::limits::PROTOCOL_VERSION;
use crate::wire::{check, fb, Check, Encoder, HelloFrame, Verifier};

/// Largest frame the client accepts from the router.
const FRAME_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// One session in a Located answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedSession {
    pub node: String,
    pub device: String,
    pub platform: String,
}

/// A blocking connection to a router, registered as node `name`.
pub struct Client {
    stream: TcpStream,
    encoder: Encoder,
    verifier: Verifier,
    input: Vec<u8>,
}

impl Client {
    /// Connects and completes the handshake; every read waits at most
    /// `timeout`.
    pub fn connect(
        router: SocketAddr,
        name: &str,
        auth_token: Option<&str>,
        timeout: Duration,
    ) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&router, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            encoder: Encoder::new(),
            verifier: Verifier::new(FRAME_BYTES_MAX),
            input: Vec::new(),
        };
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |t| t.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        let hello = client
            .encoder
            .hello(&HelloFrame {
                protocol_version: PROTOCOL_VERSION,
                node_name: name,
                incarnation,
                auth_token,
                shard: None,
                acks: false,
                received: 0,
            })
            .to_vec();
        client.stream.write_all(&hello)?;
        client.next_frame(|envelope| match envelope.body_type() {
            fb::Body::Welcome => Ok(Some(())),
            _ => Ok(None),
        })?;
        Ok(client)
    }

    /// Asks where `user` is connected.
    pub fn locate(&mut self, user: &str) -> io::Result<Vec<LocatedSession>> {
        const QUERY_ID: u64 = 1;
        let frame = self.encoder.locate(QUERY_ID, user).to_vec();
        self.stream.write_all(&frame)?;
        self.next_frame(|envelope| {
            let Some(located) = envelope.body_as_located() else {
                return Ok(None);
            };
            if located.query_id() != QUERY_ID {
                return Ok(None);
            }
            let sessions = located
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
                .unwrap_or_default();
            Ok(Some(sessions))
        })
    }

    /// Says Goodbye and waits for the router to close.
    pub fn goodbye(mut self) -> io::Result<()> {
        let frame = self.encoder.goodbye("done").to_vec();
        self.stream.write_all(&frame)?;
        let mut sink = [0u8; 4096];
        while self.stream.read(&mut sink)? > 0 {}
        Ok(())
    }

    /// Reads frames, answering Pings, until `pick` returns a value. An
    /// Error frame or a close ends it with an error.
    fn next_frame<T>(
        &mut self,
        mut pick: impl FnMut(fb::Envelope<'_>) -> io::Result<Option<T>>,
    ) -> io::Result<T> {
        loop {
            while let Check::Complete(len) = check(&self.input, FRAME_BYTES_MAX) {
                let frame: Vec<u8> = self.input.drain(..len).collect();
                let envelope = self
                    .verifier
                    .verify(&frame)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?
                    .envelope();
                match envelope.body_type() {
                    fb::Body::Ping => {
                        let nonce = envelope.body_as_ping().expect("checked").nonce();
                        let pong = self.encoder.pong(nonce).to_vec();
                        self.stream.write_all(&pong)?;
                    }
                    fb::Body::Error => {
                        let error = envelope.body_as_error().expect("checked");
                        return Err(io::Error::other(format!(
                            "the router refused: {} ({})",
                            error.text().unwrap_or(""),
                            error.code().variant_name().unwrap_or("unknown code")
                        )));
                    }
                    _ => {
                        if let Some(value) = pick(envelope)? {
                            return Ok(value);
                        }
                    }
                }
            }
            if let Check::TooLarge(declared) = check(&self.input, FRAME_BYTES_MAX) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the router announced a {declared}-byte frame"),
                ));
            }
            let mut chunk = [0u8; 64 * 1024];
            let read = self.stream.read(&mut chunk)?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the router closed the connection",
                ));
            }
            self.input.extend_from_slice(&chunk[..read]);
        }
    }
}
