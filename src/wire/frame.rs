//! Ingress framing: check the length prefix, then verify the flatbuffer once.

use std::fmt;

use flatbuffers::VerifierOptions;

use super::fb;
use crate::limits::FRAME_PREFIX_BYTES;

/// Length prefix, root offset and file identifier: the least a frame holds.
pub(super) const IDENTIFIED_FRAME_BYTES_MIN: usize = FRAME_PREFIX_BYTES + 4 + 4;

/// What the bytes at the front of a read buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A whole frame of this many bytes, length prefix included.
    Complete(usize),
    /// Not a whole frame yet; read more. A length prefix that was readable
    /// is already known to be within the limit.
    Incomplete,
    /// The length prefix declares more than the limit allows.
    TooLarge(u32),
}

/// Bytes the frame at the front of `buf` needs in all, length prefix
/// included, as far as `buf` tells: the prefix alone while it is not all
/// there. (For partial frames, after [`check`]: `Incomplete`.)
pub fn frame_need(buf: &[u8]) -> usize {
    match buf.get(..FRAME_PREFIX_BYTES) {
        Some(prefix) => {
            FRAME_PREFIX_BYTES + u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize
        }
        None => FRAME_PREFIX_BYTES,
    }
}

/// Looks at the length prefix at the front of `buf`, and nothing else.
///
/// This is the cheap check that runs before a frame's body is buffered: a
/// peer announcing a frame larger than `frame_bytes_max` is refused as soon
/// as its 4 length bytes arrive.
#[inline]
pub fn check(buf: &[u8], frame_bytes_max: u32) -> Check {
    let Some(prefix) = buf.get(..FRAME_PREFIX_BYTES) else {
        return Check::Incomplete;
    };
    let declared = u32::from_le_bytes(prefix.try_into().expect("4 bytes"));
    if declared > frame_bytes_max {
        return Check::TooLarge(declared);
    }
    let total = FRAME_PREFIX_BYTES + declared as usize;
    if buf.len() < total {
        Check::Incomplete
    } else {
        Check::Complete(total)
    }
}

/// Why a frame was refused at ingress. Each maps to one `ErrorCode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is over the limit.
    TooLarge { declared: u32, max: u32 },
    /// The buffer lacks the `IMR1` file identifier: not an imrouter envelope.
    NotAnEnvelope,
    /// The flatbuffers verifier refused the buffer.
    Malformed(String),
}

impl FrameError {
    /// The `ErrorCode` a node is told before its connection is closed.
    pub fn code(&self) -> fb::ErrorCode {
        match self {
            FrameError::TooLarge { .. } => fb::ErrorCode::FrameTooLarge,
            FrameError::NotAnEnvelope | FrameError::Malformed(_) => fb::ErrorCode::Malformed,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { declared, max } => {
                write!(
                    f,
                    "frame of {declared} bytes is over the limit of {max} bytes"
                )
            }
            FrameError::NotAnEnvelope => {
                f.write_str("not an imrouter envelope (file identifier IMR1 missing)")
            }
            FrameError::Malformed(why) => write!(f, "frame failed verification: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Verifies whole frames with explicit limits.
///
/// The limits are far above anything a well-formed frame needs (an Envelope
/// nests at most three tables deep and holds a handful of tables), and far
/// below what would let a crafted frame make the verifier do much work.
#[derive(Debug, Clone)]
pub struct Verifier {
    options: VerifierOptions,
}

impl Verifier {
    /// Deepest table nesting accepted: Envelope, body table, plus room for
    /// fields added by later protocol versions.
    const DEPTH_MAX: usize = 8;
    /// Most tables in one frame.
    const TABLES_MAX: usize = 64;

    pub fn new(frame_bytes_max: u32) -> Self {
        Verifier {
            options: VerifierOptions {
                max_depth: Self::DEPTH_MAX,
                max_tables: Self::TABLES_MAX,
                max_apparent_size: Self::apparent_max(frame_bytes_max),
                ignore_missing_null_terminator: false,
            },
        }
    }

    /// The verifier's `max_apparent_size` for a frame limit. Shared strings
    /// may make the apparent (tree) size larger than the buffer; four times
    /// the frame is plenty.
    pub(crate) fn apparent_max(frame_bytes_max: u32) -> usize {
        (frame_bytes_max as usize + FRAME_PREFIX_BYTES) * 4
    }

    #[cfg(test)]
    pub(crate) fn options(&self) -> &VerifierOptions {
        &self.options
    }

    /// Verifies one complete frame (length prefix included, as returned by
    /// [`check`]); the [`Frame`] reads it in place from then on.
    pub fn verify<'a>(&self, frame: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        // `buffer_has_identifier` asserts on short input; a hostile peer must
        // not be able to reach that assert.
        if frame.len() < IDENTIFIED_FRAME_BYTES_MIN
            || !fb::envelope_size_prefixed_buffer_has_identifier(frame)
        {
            return Err(FrameError::NotAnEnvelope);
        }
        if super::fast::verify_common(frame, self.options.max_apparent_size) {
            // SAFETY: the fast path accepts only frames the flatbuffers
            // verifier accepts with these options (see `fast`).
            return Ok(unsafe { Frame::assume_verified(frame) });
        }
        self.verify_generic(frame)?;
        // SAFETY: just verified.
        Ok(unsafe { Frame::assume_verified(frame) })
    }

    /// The flatbuffers verifier alone (identifier already checked).
    pub(crate) fn verify_generic<'a>(
        &self,
        frame: &'a [u8],
    ) -> Result<fb::Envelope<'a>, FrameError> {
        fb::size_prefixed_root_as_envelope_with_opts(&self.options, frame)
            .map_err(|error| FrameError::Malformed(error.to_string()))
    }
}

/// A frame known to be valid: it passed [`Verifier::verify`], or it is a
/// byte-for-byte copy of one that did, or an [`super::Encoder`] built it.
///
/// This is the one safety boundary of the protocol code: the flatbuffers
/// accessors behind [`Frame::envelope`] read without checking, which is
/// sound only for valid buffers, and the only ways to get a `Frame` are
/// the verifier and the `unsafe` [`Frame::assume_verified`], whose callers
/// (the verifier, and the decoder of cross-shard batches, which carry
/// copies of verified or encoded frames) state why it holds.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Wraps bytes without verifying them.
    ///
    /// # Safety
    ///
    /// `bytes` must be a byte-for-byte copy of a frame that passed
    /// [`Verifier::verify`] or that an [`super::Encoder`] produced.
    #[inline]
    pub unsafe fn assume_verified(bytes: &'a [u8]) -> Frame<'a> {
        Frame { bytes }
    }

    /// The root table, read in place.
    #[inline]
    pub fn envelope(self) -> fb::Envelope<'a> {
        // SAFETY: a `Frame` holds a valid frame (see the type's docs).
        unsafe { flatbuffers::size_prefixed_root_unchecked::<fb::Envelope>(self.bytes) }
    }

    #[inline]
    pub fn body_type(self) -> fb::Body {
        self.envelope().body_type()
    }

    /// The whole frame, length prefix included.
    #[inline]
    pub fn bytes(self) -> &'a [u8] {
        self.bytes
    }

    #[inline]
    pub fn len(self) -> usize {
        self.bytes.len()
    }

    #[inline]
    pub fn is_empty(self) -> bool {
        self.bytes.is_empty()
    }
}

/// An owned copy of a [`Frame`], for work that outlives the read buffer
/// (a Fanout being resolved). Made only from a `Frame`, so it is valid too.
pub struct FrameBuf {
    bytes: Box<[u8]>,
}

impl Frame<'_> {
    pub fn to_owned_frame(self) -> FrameBuf {
        FrameBuf {
            bytes: self.bytes.into(),
        }
    }
}

impl FrameBuf {
    pub fn frame(&self) -> Frame<'_> {
        // SAFETY: copied from a `Frame`, which holds a valid frame.
        unsafe { Frame::assume_verified(&self.bytes) }
    }
}

impl std::fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame({:?}, {} bytes)",
            self.body_type(),
            self.bytes.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reads_only_the_prefix() {
        assert_eq!(check(&[], 100), Check::Incomplete);
        assert_eq!(check(&[5, 0, 0], 100), Check::Incomplete);
        assert_eq!(check(&[5, 0, 0, 0, 1, 2], 100), Check::Incomplete);
        assert_eq!(check(&[2, 0, 0, 0, 1, 2, 9], 100), Check::Complete(6));
        assert_eq!(check(&[101, 0, 0, 0], 100), Check::TooLarge(101));
        assert_eq!(
            check(&[0xff, 0xff, 0xff, 0xff], 100),
            Check::TooLarge(u32::MAX)
        );
    }

    #[test]
    fn verify_refuses_garbage_without_panicking() {
        let verifier = Verifier::new(1024);
        let mut frame = vec![12, 0, 0, 0];
        frame.extend_from_slice(b"IMR1IMR1IMR1");
        assert!(verifier.verify(&frame).is_err());
        let frame = [4u8, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(
            verifier.verify(&frame).unwrap_err(),
            FrameError::NotAnEnvelope
        );
        // Shorter than an identifier: refused, not an assert in flatbuffers.
        for len in 0..12 {
            let frame = vec![0u8; len];
            assert_eq!(
                verifier.verify(&frame).unwrap_err(),
                FrameError::NotAnEnvelope
            );
        }
    }
}
