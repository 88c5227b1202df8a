//! A hand-written reader for the few `sentencepiece_model.proto` (proto2) fields that matter at
//! encode/decode time (see `docs/sentencepiece-behaviour.md` §1.1). No code generation, no
//! dependencies; every read is bounds-checked, so truncated or random bytes give an error string,
//! never a panic.

/// One field value as it appears on the wire.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // Fixed64's payload is skipped, never read
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the `(field number, value)` pairs of one serialized message.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut out: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at byte {}", self.pos));
            };
            self.pos += 1;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(format!(
            "varint longer than 10 bytes ending at byte {}",
            self.pos
        ))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "truncated field: {n} bytes wanted at byte {} of a {}-byte message",
                self.pos,
                self.buf.len()
            )),
        }
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let start = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(format!("invalid field number {field} at byte {start}"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len)
                    .map_err(|_| format!("length {len} too large at byte {start}"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            w => {
                return Err(format!(
                    "unsupported wire type {w} (field {field}) at byte {start}"
                ))
            }
        };
        Ok(Some((field as u32, value)))
    }
}

/// Piece types (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl PieceType {
    fn from_wire(v: u64) -> Option<Self> {
        Some(match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct PieceProto {
    pub piece: Vec<u8>,
    pub score: f32,
    pub kind: PieceType,
}

#[derive(Debug, Clone)]
pub struct NormalizerProto {
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Default for NormalizerProto {
    fn default() -> Self {
        // proto2 defaults: the three flags are true when absent.
        NormalizerProto {
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrainerProto {
    pub model_type: u64,
    pub byte_fallback: bool,
    pub treat_whitespace_as_suffix: bool,
    pub unk_surface: Vec<u8>,
    pub unk_piece: Vec<u8>,
    pub bos_piece: Vec<u8>,
    pub eos_piece: Vec<u8>,
    pub pad_piece: Vec<u8>,
}

impl Default for TrainerProto {
    fn default() -> Self {
        TrainerProto {
            model_type: 1, // UNIGRAM is the proto default
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_surface: " \u{2047} ".as_bytes().to_vec(),
            unk_piece: b"<unk>".to_vec(),
            bos_piece: b"<s>".to_vec(),
            eos_piece: b"</s>".to_vec(),
            pad_piece: b"<pad>".to_vec(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ModelProto {
    pub pieces: Vec<PieceProto>,
    pub trainer: TrainerProto,
    pub normalizer: NormalizerProto,
    pub denormalizer: Option<NormalizerProto>,
}

fn parse_piece(buf: &[u8]) -> Result<PieceProto, String> {
    let mut p = PieceProto {
        piece: Vec::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match (field, v) {
            (1, Value::Bytes(b)) => p.piece = b.to_vec(),
            (2, Value::Fixed32(x)) => p.score = f32::from_bits(x),
            // proto2 closed enum: an unknown value leaves the field at its default (NORMAL).
            (3, Value::Varint(x)) => {
                if let Some(k) = PieceType::from_wire(x) {
                    p.kind = k
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

fn parse_trainer(buf: &[u8], t: &mut TrainerProto) -> Result<(), String> {
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match (field, v) {
            (3, Value::Varint(x)) => t.model_type = x,
            (24, Value::Varint(x)) => t.treat_whitespace_as_suffix = x != 0,
            (35, Value::Varint(x)) => t.byte_fallback = x != 0,
            (44, Value::Bytes(b)) => t.unk_surface = b.to_vec(),
            (45, Value::Bytes(b)) => t.unk_piece = b.to_vec(),
            (46, Value::Bytes(b)) => t.bos_piece = b.to_vec(),
            (47, Value::Bytes(b)) => t.eos_piece = b.to_vec(),
            (48, Value::Bytes(b)) => t.pad_piece = b.to_vec(),
            _ => {}
        }
    }
    Ok(())
}

fn parse_normalizer(buf: &[u8], n: &mut NormalizerProto) -> Result<(), String> {
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match (field, v) {
            (2, Value::Bytes(b)) => n.precompiled_charsmap = b.to_vec(),
            (3, Value::Varint(x)) => n.add_dummy_prefix = x != 0,
            (4, Value::Varint(x)) => n.remove_extra_whitespaces = x != 0,
            (5, Value::Varint(x)) => n.escape_whitespaces = x != 0,
            _ => {}
        }
    }
    Ok(())
}

/// Parses a serialized `ModelProto`. Repeated occurrences of a sub-message merge, as protobuf does.
pub fn parse_model(buf: &[u8]) -> Result<ModelProto, String> {
    let mut m = ModelProto::default();
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match (field, v) {
            (1, Value::Bytes(b)) => {
                let idx = m.pieces.len();
                m.pieces
                    .push(parse_piece(b).map_err(|e| format!("piece {idx}: {e}"))?);
            }
            (2, Value::Bytes(b)) => {
                parse_trainer(b, &mut m.trainer).map_err(|e| format!("trainer_spec: {e}"))?
            }
            (3, Value::Bytes(b)) => parse_normalizer(b, &mut m.normalizer)
                .map_err(|e| format!("normalizer_spec: {e}"))?,
            (5, Value::Bytes(b)) => {
                let d = m.denormalizer.get_or_insert_with(NormalizerProto::default);
                parse_normalizer(b, d).map_err(|e| format!("denormalizer_spec: {e}"))?
            }
            _ => {}
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_garbage_never_panic() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..200usize {
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(seed as u8);
            }
            let _ = parse_model(&buf);
        }
    }

    #[test]
    fn defaults() {
        let m = parse_model(&[]).unwrap();
        assert_eq!(m.trainer.model_type, 1);
        assert!(m.normalizer.add_dummy_prefix && m.normalizer.remove_extra_whitespaces);
    }
}
