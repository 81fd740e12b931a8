//! The journal's encoding of a request record: one frame per record,
//! compact and written without any text escaping, so that the request
//! path spends little on it and the journal's pages fill slowly.
//!
//! A frame is a tag byte (`TAG`, never 0, never `{`), the payload's length
//! (4 bytes, little-endian), the payload, and a checksum of the payload (4
//! bytes). A frame cut short by the death of the process (the copy into
//! the map stopped half way, the rest of the space still zeros) or torn by
//! a crash of the machine fails its checksum and is skipped. The payload
//! holds the record's fields in a fixed order: integers as LEB128 varints
//! (the start time zigzag-encoded), texts as a length and their bytes, an
//! absent value as a 0 where its presence would be 1, the endpoint and the
//! outcome as one byte each.
//!
//! Journals of earlier versions hold one JSON object per line (`.jsonl`
//! segments); `json_lines` reads those, so a journal left behind by an
//! older gateway is still replayed.

use std::borrow::Cow;
use std::sync::Arc;

use switchboard_core::{AttemptDetail, Bodies, Endpoint, Outcome, RequestRecord, Usage};

/// The first byte of every frame (this encoding's version 1).
const TAG: u8 = 1;
/// Tag, length and checksum around the payload.
const OVERHEAD: usize = 1 + 4 + 4;

/// `record` as one frame.
pub(crate) fn encode(record: &RequestRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(TAG);
    out.extend_from_slice(&[0; 4]);
    let mut payload = Writer(&mut out);
    payload.text(&record.request_id);
    payload.varint(zigzag(record.started_at_ms));
    payload.0.push(endpoint_code(record.endpoint));
    payload.text(&record.model);
    payload.optional_text(record.deployment.as_deref());
    payload.optional_text(record.served_model.as_deref());
    payload.varint(u64::from(record.attempts));
    payload.varint(record.attempt_details.len() as u64);
    for detail in &record.attempt_details {
        payload.text(&detail.deployment);
        payload.text(&detail.model);
        payload.text(&detail.outcome);
        payload.optional(detail.status.map(u64::from));
        payload.varint(detail.duration_ms);
    }
    payload.0.push(u8::from(record.stream));
    payload.varint(u64::from(record.status));
    payload.0.push(outcome_code(record.outcome));
    payload.optional_text(record.error_code.as_deref());
    payload.varint(record.latency_ms);
    payload.optional(record.ttft_ms);
    let usage = &record.usage;
    for value in [
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.reasoning_tokens,
        usage.cache_write_tokens,
    ] {
        payload.optional(value);
    }
    payload.optional_text(record.key_id.as_deref());
    payload.optional_text(record.team_id.as_deref());
    payload.optional_text(record.end_user.as_deref());
    payload.optional(record.cost_nanos);
    payload.0.push(u8::from(record.cache_hit));
    payload.optional_text(record.metadata.as_deref());
    match &record.bodies {
        None => payload.0.push(0),
        Some(bodies) => {
            payload.0.push(1);
            payload.text(&bodies.request);
            payload.optional_text(bodies.response.as_deref());
        }
    }
    let len = out.len() - 5;
    // A record is far smaller than 4 GiB: bodies are cut long before.
    let len32 = u32::try_from(len).unwrap_or(u32::MAX);
    out[1..5].copy_from_slice(&len32.to_le_bytes());
    let sum = checksum(&out[5..]);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// The record of one whole frame (as `encode` made it); `None` if the
/// bytes are not exactly one sound frame.
pub(crate) fn decode(frame: &[u8]) -> Option<RequestRecord> {
    match next(frame)? {
        (record, used) if used == frame.len() => Some(record),
        _ => None,
    }
}

/// Every record in `bytes` (a journal segment of frames), in order, and
/// how many bytes after the last sound one were left unread. Zeros
/// between and after frames (a segment's reserved space) are skipped.
/// Reading stops at the first frame that is not sound: only the last frame
/// of a segment can be cut short (the process died while copying it), and
/// looking for frames inside its bytes could take a request body's
/// contents for a record.
pub(crate) fn records(bytes: &[u8]) -> (Vec<RequestRecord>, usize) {
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let zeros = rest.iter().take_while(|byte| **byte == 0).count();
        if zeros > 0 {
            at += zeros;
            continue;
        }
        match next(rest) {
            Some((record, used)) => {
                found.push(record);
                at += used;
            }
            None => return (found, bytes.len() - at),
        }
    }
    (found, 0)
}

/// The records of a segment written by an earlier version: one JSON
/// object per line. Zeros end a line as a newline does (the reserved space
/// of a segment, or a machine's crash); a line that does not parse (cut
/// short) is skipped.
pub(crate) fn json_lines(bytes: &[u8]) -> Vec<RequestRecord> {
    bytes
        .split(|byte| *byte == b'\n' || *byte == 0)
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}

/// The record of the frame at the start of `bytes` and the bytes it takes;
/// `None` when no sound frame starts here.
fn next(bytes: &[u8]) -> Option<(RequestRecord, usize)> {
    if *bytes.first()? != TAG {
        return None;
    }
    let len = u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
    let end = 5usize.checked_add(len)?;
    let payload = bytes.get(5..end)?;
    let sum = u32::from_le_bytes(bytes.get(end..end.checked_add(4)?)?.try_into().ok()?);
    if checksum(payload) != sum {
        return None;
    }
    let mut reader = Reader(payload);
    let record = reader.record()?;
    reader.0.is_empty().then_some((record, len + OVERHEAD))
}

/// A checksum that catches a frame cut short or torn: not a defence
/// against anyone, only against accidents. Eight bytes at a time.
fn checksum(bytes: &[u8]) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut hash = K ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        hash = (hash.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    let mut tail = [0; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    hash = (hash.rotate_left(23) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    hash ^= hash >> 29;
    (hash ^ (hash >> 32)) as u32
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Codes fixed here, not taken from the enums' order: a journal is read
/// by the next version of the gateway.
fn endpoint_code(endpoint: Endpoint) -> u8 {
    match endpoint {
        Endpoint::ChatCompletions => 1,
        Endpoint::Messages => 2,
        Endpoint::Embeddings => 3,
    }
}

fn endpoint_of(code: u8) -> Option<Endpoint> {
    Some(match code {
        1 => Endpoint::ChatCompletions,
        2 => Endpoint::Messages,
        3 => Endpoint::Embeddings,
        _ => return None,
    })
}

fn outcome_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Success => 1,
        Outcome::ClientError => 2,
        Outcome::UpstreamError => 3,
        Outcome::ClientClosed => 4,
        Outcome::Shutdown => 5,
    }
}

fn outcome_of(code: u8) -> Option<Outcome> {
    Some(match code {
        1 => Outcome::Success,
        2 => Outcome::ClientError,
        3 => Outcome::UpstreamError,
        4 => Outcome::ClientClosed,
        5 => Outcome::Shutdown,
        _ => return None,
    })
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn text(&mut self, text: &str) {
        self.varint(text.len() as u64);
        self.0.extend_from_slice(text.as_bytes());
    }

    fn optional_text(&mut self, text: Option<&str>) {
        match text {
            None => self.0.push(0),
            Some(text) => {
                self.0.push(1);
                self.text(text);
            }
        }
    }

    fn optional(&mut self, value: Option<u64>) {
        match value {
            None => self.0.push(0),
            Some(value) => {
                self.0.push(1);
                self.varint(value);
            }
        }
    }
}

/// Reads a payload front to back; every read fails (`None`) on bytes that
/// are not what the encoding wrote.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn flag(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return None;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn narrow<T: TryFrom<u64>>(&mut self) -> Option<T> {
        T::try_from(self.varint()?).ok()
    }

    fn text(&mut self) -> Option<String> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(text.to_vec()).ok()
    }

    fn optional_text(&mut self) -> Option<Option<String>> {
        Some(if self.flag()? {
            Some(self.text()?)
        } else {
            None
        })
    }

    fn optional(&mut self) -> Option<Option<u64>> {
        Some(if self.flag()? {
            Some(self.varint()?)
        } else {
            None
        })
    }

    fn record(&mut self) -> Option<RequestRecord> {
        let request_id = self.text()?;
        let started_at_ms = unzigzag(self.varint()?);
        let endpoint = endpoint_of(self.byte()?)?;
        let model = self.text()?;
        let deployment = self.optional_text()?;
        let served_model = self.optional_text()?;
        let attempts = self.narrow()?;
        let count: usize = self.narrow()?;
        // Each detail takes at least five bytes: no count can ask for more
        // room than the payload could fill.
        let mut attempt_details = Vec::with_capacity(count.min(self.0.len() / 5));
        for _ in 0..count {
            attempt_details.push(AttemptDetail {
                deployment: Arc::from(self.text()?),
                model: Arc::from(self.text()?),
                outcome: Cow::Owned(self.text()?),
                status: match self.optional()? {
                    Some(status) => Some(u16::try_from(status).ok()?),
                    None => None,
                },
                duration_ms: self.varint()?,
            });
        }
        let stream = self.flag()?;
        let status = self.narrow()?;
        let outcome = outcome_of(self.byte()?)?;
        let error_code = self.optional_text()?;
        let latency_ms = self.varint()?;
        let ttft_ms = self.optional()?;
        let usage = Usage {
            input_tokens: self.optional()?,
            output_tokens: self.optional()?,
            cached_input_tokens: self.optional()?,
            reasoning_tokens: self.optional()?,
            cache_write_tokens: self.optional()?,
        };
        let key_id = self.optional_text()?;
        let team_id = self.optional_text()?;
        let end_user = self.optional_text()?;
        let cost_nanos = self.optional()?;
        let cache_hit = self.flag()?;
        let metadata = self.optional_text()?;
        let bodies = if self.flag()? {
            Some(Bodies {
                request: self.text()?,
                response: self.optional_text()?,
            })
        } else {
            None
        };
        Some(RequestRecord {
            request_id,
            started_at_ms,
            endpoint,
            model,
            deployment,
            served_model,
            attempts,
            attempt_details,
            stream,
            status,
            outcome,
            error_code,
            latency_ms,
            ttft_ms,
            usage,
            key_id: key_id.map(Into::into),
            team_id: team_id.map(Into::into),
            end_user,
            cost_nanos,
            cache_hit,
            metadata,
            bodies,
        })
    }
}
