//! The wire protocol: frames, their flatbuffer schema, and the codec.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes: a
//! size-prefixed flatbuffer whose root is an [`fb::Envelope`] and whose file
//! identifier is `IMR1`. (The flatbuffers "size prefix" *is* our length
//! prefix, so a frame is exactly what `FlatBufferBuilder::finish_size_prefixed`
//! produces.)
//!
//! Ingress is two steps, cheapest first: [`check`] looks only at the length
//! prefix, so an over-long frame is refused before its body is buffered;
//! [`Verifier::verify`] then verifies the flatbuffer once, with explicit
//! limits: the flatbuffers verifier, or for the three frames that make up
//! nearly all traffic (Route, SessionOpen, SessionClose) a fast path that
//! performs the same checks (`fast`, proved against the schema and
//! differentially tested against the verifier). A verified frame is a
//! [`Frame`], the one type that reads flatbuffers without checking; its
//! fields and payload are read in place, without copying, and a frame
//! handed to another shard is not verified again. [`Request::parse`] turns
//! a node's frame into a typed request or a [`PeerFault`], with every
//! field check of the protocol in one place.
//!
//! Egress goes through [`Encoder`], one reusable builder per shard (and per
//! simulated node in the load generator), so building a frame allocates
//! nothing once the builder has grown to the largest frame.
//!
//! docs/PROTOCOL.md is the normative description for node implementers.

mod direct;
mod encode;
mod fast;

/// For the fuzz targets (`fuzz/`): what they compare. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Whether the fast verification path and the flatbuffers verifier
    /// agree on `frame` (a whole frame, prefix included): the fast path
    /// may refuse what the verifier accepts (it then falls back), never
    /// the other way round.
    pub fn fast_path_sound(frame: &[u8]) -> bool {
        let verifier = super::Verifier::new(crate::limits::FRAME_BYTES_MAX_CEILING);
        if frame.len() < super::frame::IDENTIFIED_FRAME_BYTES_MIN
            || !super::fb::envelope_size_prefixed_buffer_has_identifier(frame)
        {
            return true;
        }
        let apparent = super::Verifier::apparent_max(crate::limits::FRAME_BYTES_MAX_CEILING);
        !super::fast::verify_common(frame, apparent) || verifier.verify_generic(frame).is_ok()
    }
}
mod frame;
mod request;

#[allow(
    unused_imports,
    dead_code,
    deprecated,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic
)]
#[rustfmt::skip]
mod imrouter_generated;

/// The generated flatbuffers types (`schema/imrouter.fbs`).
pub use imrouter_generated::imrouter::wire::fb;

pub use encode::{
    DeliverFrame, Encoder, FanoutFrame, HelloFrame, MovedFrame, NodeEventFrame, PublishFrame,
    RouteFrame, WelcomeFrame,
};
pub use frame::{check, frame_need, Check, Frame, FrameBuf, FrameError, Verifier};
pub use request::{
    body_name, Auth, Hello, InvalidField, Message, PeerFault, Request, RequestLimits, SessionClose,
    SessionOpen, SessionSync,
};

/// Route flag bit 0: also send a `Status` with verdict `Routed` on success.
/// Verdicts other than `Routed` are always sent.
pub const ROUTE_FLAG_ACK: u32 = 1;

/// Route flag bit 1: carbons. Also deliver a copy to the sender's other
/// devices (every session of `from_user` but `from_device`), as Delivers
/// with this bit set. The verdict is about the recipient only.
pub const ROUTE_FLAG_CARBON: u32 = 2;

/// Route flags the router understands; other bits are reserved and must be 0.
pub const ROUTE_FLAGS_KNOWN: u32 = ROUTE_FLAG_ACK | ROUTE_FLAG_CARBON;
