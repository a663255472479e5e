//! Route and Deliver frames written front to back, without the flatbuffers
//! builder.
//!
//! These two frames are on the hot path of every message (a node encodes a
//! Route, the router a Deliver), and the generic builder spends most of its
//! time on bookkeeping a fixed schema does not need (vtable deduplication,
//! back-to-front growth, alignment tracking): about 1,400 instructions per
//! frame, against a few hundred here. The layout is a plain, valid
//! flatbuffer, and the tests check every frame this writes with the
//! flatbuffers verifier and read every field back:
//!
//! ```text
//! u32   size prefix (bytes after it)
//! u32   root offset -> Envelope table
//! [4]   file identifier "IMR1"
//! vtable of Envelope  (body_type at 8, body at 4)
//! Envelope table      soffset, body offset, body_type
//! vtable of the body  (Route: 7 fields; Deliver: 10, the 8th and 9th
//!                     absent)
//! body table          soffset, from_user, message_id, from_device, to_user,
//!                     to_device | devices, flags, payload, (Deliver:
//!                     padding, origin)
//! strings and vectors, in field order, each 4-byte aligned
//! ```
//!
//! Offsets and alignment are relative to the start of the frame (the size
//! prefix), which is what the verifier checks them against.

use super::fb;

/// Bytes before the body's vtable: prefix, root offset, identifier,
/// Envelope vtable (8) and table (12).
const ENVELOPE_BYTES: usize = 32;
/// Envelope table position, and where its body offset field sits.
const ENVELOPE_TABLE: usize = 20;
const ENVELOPE_BODY_FIELD: usize = ENVELOPE_TABLE + 4;
/// Body vtable position and size: 4 + 2 x 7 fields for a Route, 4 + 2 x 10
/// for a Deliver, so that the table after it is 8-aligned (it holds u64s).
const BODY_VTABLE: usize = ENVELOPE_BYTES;
const ROUTE_VTABLE_BYTES: usize = 4 + 2 * 7;
const DELIVER_VTABLE_BYTES: usize = 4 + 2 * 10;
const BODY_TABLE: usize = 56;
/// Body table: soffset, from_user, message_id (8), from_device, to_user,
/// to_device/devices, flags, payload; a Deliver's adds 4 bytes of padding
/// and origin (8).
const ROUTE_TABLE_BYTES: usize = 36;
const DELIVER_TABLE_BYTES: usize = 48;
const FIELD_FROM_USER: usize = 4;
const FIELD_MESSAGE_ID: usize = 8;
const FIELD_FROM_DEVICE: usize = 16;
const FIELD_TO_USER: usize = 20;
const FIELD_DEVICE: usize = 24;
const FIELD_FLAGS: usize = 28;
const FIELD_PAYLOAD: usize = 32;
const FIELD_ORIGIN: usize = 40;

const _: () = assert!(BODY_VTABLE + ROUTE_VTABLE_BYTES <= BODY_TABLE);
const _: () = assert!(BODY_VTABLE + DELIVER_VTABLE_BYTES <= BODY_TABLE);
const _: () = assert!((BODY_TABLE + FIELD_ORIGIN) % 8 == 0);
const _: () = assert!(BODY_TABLE % 8 == 0 && ENVELOPE_TABLE % 4 == 0);

/// Appends a Route frame to `out`.
pub(super) fn route(out: &mut Vec<u8>, frame: &super::RouteFrame<'_>) {
    let start = begin(out, fb::Body::Route, frame.to_device.is_some());
    let table = start + BODY_TABLE;
    put_u64(out, table + FIELD_MESSAGE_ID, frame.message_id);
    put_u32(out, table + FIELD_FLAGS, frame.flags);
    string(
        out,
        start,
        table + FIELD_FROM_USER,
        frame.from_user.as_bytes(),
    );
    string(
        out,
        start,
        table + FIELD_FROM_DEVICE,
        frame.from_device.as_bytes(),
    );
    string(out, start, table + FIELD_TO_USER, frame.to_user.as_bytes());
    if let Some(device) = frame.to_device {
        string(out, start, table + FIELD_DEVICE, device.as_bytes());
    }
    bytes(out, start, table + FIELD_PAYLOAD, frame.payload);
    finish(out, start);
}

/// Appends a Deliver frame to `out`.
pub(super) fn deliver(out: &mut Vec<u8>, frame: &super::DeliverFrame<'_>) {
    let start = begin(out, fb::Body::Deliver, true);
    let table = start + BODY_TABLE;
    put_u64(out, table + FIELD_MESSAGE_ID, frame.message_id);
    put_u64(out, table + FIELD_ORIGIN, frame.origin);
    put_u32(out, table + FIELD_FLAGS, frame.flags);
    string(
        out,
        start,
        table + FIELD_FROM_USER,
        frame.from_user.as_bytes(),
    );
    string(
        out,
        start,
        table + FIELD_FROM_DEVICE,
        frame.from_device.as_bytes(),
    );
    string(out, start, table + FIELD_TO_USER, frame.to_user.as_bytes());
    // A vector of offsets, each relative to its own slot, then the strings.
    let vector = link(out, start, table + FIELD_DEVICE);
    out.extend_from_slice(&(frame.devices.len() as u32).to_le_bytes());
    out.resize(out.len() + 4 * frame.devices.len(), 0);
    for (i, device) in frame.devices.iter().enumerate() {
        string(out, start, vector + 4 + 4 * i, device);
    }
    bytes(out, start, table + FIELD_PAYLOAD, frame.payload);
    finish(out, start);
}

/// Writes everything up to the end of the body table and returns where the
/// frame starts. The body table's fields are filled in by the caller.
fn begin(out: &mut Vec<u8>, body: fb::Body, with_field_4: bool) -> usize {
    let deliver = body == fb::Body::Deliver;
    let (vtable_bytes, table_bytes) = if deliver {
        (DELIVER_VTABLE_BYTES, DELIVER_TABLE_BYTES)
    } else {
        (ROUTE_VTABLE_BYTES, ROUTE_TABLE_BYTES)
    };
    let start = out.len();
    out.resize(start + BODY_TABLE + table_bytes, 0);
    let head = &mut out[start..];
    // Root offset: from its own position (4) to the Envelope table.
    head[4..8].copy_from_slice(&((ENVELOPE_TABLE - 4) as u32).to_le_bytes());
    head[8..12].copy_from_slice(fb::ENVELOPE_IDENTIFIER.as_bytes());
    // Envelope vtable at 12: size 8, table size 12, body_type at 8, body at 4.
    for (at, value) in [(12, 8u16), (14, 12), (16, 8), (18, 4)] {
        head[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }
    // Envelope table at 20: soffset back to its vtable, body offset, type.
    head[20..24].copy_from_slice(&((ENVELOPE_TABLE - 12) as i32).to_le_bytes());
    let body_offset = (BODY_TABLE - ENVELOPE_BODY_FIELD) as u32;
    head[ENVELOPE_BODY_FIELD..ENVELOPE_BODY_FIELD + 4].copy_from_slice(&body_offset.to_le_bytes());
    head[28] = body.0;
    // Body vtable: field offsets in schema order (message_id, from_user,
    // from_device, to_user, to_device/devices, flags, payload; a Deliver's
    // recipients and recipient_device_counts absent, then origin).
    let field_4 = if with_field_4 { FIELD_DEVICE as u16 } else { 0 };
    let vtable = [
        vtable_bytes as u16,
        table_bytes as u16,
        FIELD_MESSAGE_ID as u16,
        FIELD_FROM_USER as u16,
        FIELD_FROM_DEVICE as u16,
        FIELD_TO_USER as u16,
        field_4,
        FIELD_FLAGS as u16,
        FIELD_PAYLOAD as u16,
        0,
        0,
        FIELD_ORIGIN as u16,
    ];
    let fields = (vtable_bytes - 4) / 2;
    for (i, value) in vtable[..2 + fields].iter().enumerate() {
        let at = BODY_VTABLE + 2 * i;
        head[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }
    let soffset = (BODY_TABLE - BODY_VTABLE) as i32;
    head[BODY_TABLE..BODY_TABLE + 4].copy_from_slice(&soffset.to_le_bytes());
    start
}

/// Sets the size prefix once everything is written.
fn finish(out: &mut [u8], start: usize) {
    let size = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&size.to_le_bytes());
}

/// Pads to 4 bytes (relative to the frame) and points the offset field at
/// `field` to the current end; returns that position.
fn link(out: &mut Vec<u8>, start: usize, field: usize) -> usize {
    let padding = (4 - (out.len() - start) % 4) % 4;
    out.resize(out.len() + padding, 0);
    let target = out.len();
    put_u32(out, field, (target - field) as u32);
    target
}

/// A string: length, bytes, NUL terminator.
fn string(out: &mut Vec<u8>, start: usize, field: usize, value: &[u8]) {
    link(out, start, field);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
    out.push(0);
}

/// A vector of bytes: length, bytes.
fn bytes(out: &mut Vec<u8>, start: usize, field: usize, value: &[u8]) {
    link(out, start, field);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

#[inline]
fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[inline]
fn put_u64(out: &mut [u8], at: usize, value: u64) {
    out[at..at + 8].copy_from_slice(&value.to_le_bytes());
}
