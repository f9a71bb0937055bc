//! The parser: a bounds-checked cursor over the file, the metadata and the tensor directory.

use std::collections::HashSet;

use govbox_drivers::DType;

use super::*;

/// A bounds-checked little-endian cursor over the file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// `n` bytes, or `Truncated` naming `what` (built only on failure).
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> std::result::Result<&'a [u8], GgufError> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| self.buf.get(self.pos..end).map(|s| (s, end)));
        match slice {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated { what: what(), offset: self.pos, needed: n, file_len: self.buf.len() }),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> std::result::Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::StringTooLong { what: what(), len });
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::BadUtf8 { what: what() })
    }

    /// `n` fixed-size elements, each converted by `conv`. The bytes are bounds-checked before the
    /// vector is allocated.
    fn elements<T, const N: usize>(
        &mut self,
        n: u64,
        conv: fn([u8; N]) -> T,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<Vec<T>, GgufError> {
        let bytes = self.take(n.saturating_mul(N as u64), what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                conv(a)
            })
            .collect())
    }
}

/// Parses and validates the header of a whole GGUF v3 file.
///
/// Checks, in file order: the magic; the version (3 only); the tensor and key/value counts
/// against [`MAX_TENSORS`] and [`MAX_KVS`]; every string against [`MAX_STRING_LEN`] and UTF-8;
/// every array against [`MAX_ARRAY_LEN`]; unique keys; `general.alignment` a power of two; then
/// for each tensor: a unique name, at most [`MAX_DIMS`] dims whose product fits, a supported
/// type, rows of whole blocks, an aligned offset, and data that lies inside the file.
pub fn parse_gguf(bytes: &[u8]) -> std::result::Result<GgufFile, GgufError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let magic: [u8; 4] = r.array(&|| "magic".to_string()).map_err(|_| GgufError::BadMagic {
        found: bytes.iter().take(4).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect(),
    })?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            found: magic.iter().flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect(),
        });
    }
    let version = r.u32(&|| "version".to_string())?;
    if version != GGUF_VERSION {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = r.u64(&|| "tensor count".to_string())?;
    if n_tensors > MAX_TENSORS {
        return Err(GgufError::TooManyTensors { count: n_tensors });
    }
    let n_kv = r.u64(&|| "metadata key/value count".to_string())?;
    if n_kv > MAX_KVS {
        return Err(GgufError::TooManyKvs { count: n_kv });
    }

    let metadata = read_metadata(&mut r, n_kv)?;
    let alignment = alignment_of(&metadata)?;
    let infos = read_tensor_infos(&mut r, n_tensors, alignment)?;

    // The data section starts at the first aligned offset after the directory.
    let data_offset = r.pos.checked_next_multiple_of(alignment).ok_or_else(|| GgufError::BadAlignment {
        detail: format!("aligning the data section to {alignment} overflows"),
    })?;
    let file_len = bytes.len();
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, ggml_type, dtype, rel, n_bytes) in infos {
        let start = (data_offset as u64).checked_add(rel);
        let end = start.and_then(|s| s.checked_add(n_bytes as u64));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len as u64 => {
                tensors.push(GgufTensorInfo { name, dims, ggml_type, dtype, offset: start, n_bytes })
            }
            _ => {
                let start = start.unwrap_or(u64::MAX);
                return Err(GgufError::BeyondEof {
                    tensor: name,
                    start,
                    end: start.saturating_add(n_bytes as u64),
                    file_len,
                });
            }
        }
    }
    Ok(GgufFile { version, metadata, tensors, alignment, data_offset })
}

fn read_metadata(r: &mut Reader<'_>, n_kv: u64) -> std::result::Result<Vec<(String, GgufValue)>, GgufError> {
    // Each pair takes at least 12 bytes (key length and type), which bounds the allocation by the
    // file rather than by the declared count.
    let mut out = Vec::with_capacity((n_kv as usize).min(r.remaining() / 12));
    let mut seen = HashSet::new();
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        if !seen.insert(key.clone()) {
            return Err(GgufError::DuplicateKey { key });
        }
        let type_id = r.u32(&|| format!("type of metadata key '{key}'"))?;
        let value = read_value(r, &key, type_id)?;
        out.push((key, value));
    }
    Ok(out)
}

fn read_value(r: &mut Reader<'_>, key: &str, type_id: u32) -> std::result::Result<GgufValue, GgufError> {
    let what = || format!("value of metadata key '{key}'");
    Ok(match type_id {
        value_type::U8 => GgufValue::U8(u8::from_le_bytes(r.array(&what)?)),
        value_type::I8 => GgufValue::I8(i8::from_le_bytes(r.array(&what)?)),
        value_type::U16 => GgufValue::U16(u16::from_le_bytes(r.array(&what)?)),
        value_type::I16 => GgufValue::I16(i16::from_le_bytes(r.array(&what)?)),
        value_type::U32 => GgufValue::U32(u32::from_le_bytes(r.array(&what)?)),
        value_type::I32 => GgufValue::I32(i32::from_le_bytes(r.array(&what)?)),
        value_type::F32 => GgufValue::F32(f32::from_le_bytes(r.array(&what)?)),
        value_type::BOOL => GgufValue::Bool(read_bool(r.array(&what)?, key)?),
        value_type::STRING => GgufValue::String(r.string(&what)?),
        value_type::U64 => GgufValue::U64(u64::from_le_bytes(r.array(&what)?)),
        value_type::I64 => GgufValue::I64(i64::from_le_bytes(r.array(&what)?)),
        value_type::F64 => GgufValue::F64(f64::from_le_bytes(r.array(&what)?)),
        value_type::ARRAY => GgufValue::Array(read_array(r, key)?),
        t => return Err(GgufError::BadValueType { key: key.to_string(), detail: format!("unknown value type {t}") }),
    })
}

fn read_bool(b: [u8; 1], key: &str) -> std::result::Result<bool, GgufError> {
    match b[0] {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(GgufError::BadValueType { key: key.to_string(), detail: format!("bool byte is {v}, not 0 or 1") }),
    }
}

fn read_array(r: &mut Reader<'_>, key: &str) -> std::result::Result<GgufArray, GgufError> {
    let elem_type = r.u32(&|| format!("element type of array '{key}'"))?;
    let n = r.u64(&|| format!("length of array '{key}'"))?;
    if n > MAX_ARRAY_LEN {
        return Err(GgufError::ArrayTooLong { key: key.to_string(), len: n });
    }
    let what = || format!("elements of array '{key}'");
    Ok(match elem_type {
        value_type::U8 => GgufArray::U8(r.elements(n, u8::from_le_bytes, &what)?),
        value_type::I8 => GgufArray::I8(r.elements(n, i8::from_le_bytes, &what)?),
        value_type::U16 => GgufArray::U16(r.elements(n, u16::from_le_bytes, &what)?),
        value_type::I16 => GgufArray::I16(r.elements(n, i16::from_le_bytes, &what)?),
        value_type::U32 => GgufArray::U32(r.elements(n, u32::from_le_bytes, &what)?),
        value_type::I32 => GgufArray::I32(r.elements(n, i32::from_le_bytes, &what)?),
        value_type::F32 => GgufArray::F32(r.elements(n, f32::from_le_bytes, &what)?),
        value_type::U64 => GgufArray::U64(r.elements(n, u64::from_le_bytes, &what)?),
        value_type::I64 => GgufArray::I64(r.elements(n, i64::from_le_bytes, &what)?),
        value_type::F64 => GgufArray::F64(r.elements(n, f64::from_le_bytes, &what)?),
        value_type::BOOL => {
            let raw: Vec<[u8; 1]> = r.elements(n, |b| b, &what)?;
            GgufArray::Bool(raw.into_iter().map(|b| read_bool(b, key)).collect::<std::result::Result<_, _>>()?)
        }
        value_type::STRING => {
            // Each string takes at least its 8-byte length.
            let mut v = Vec::with_capacity((n as usize).min(r.remaining() / 8));
            for j in 0..n {
                v.push(r.string(&|| format!("element {j} of array '{key}'"))?);
            }
            GgufArray::String(v)
        }
        value_type::ARRAY => {
            return Err(GgufError::BadValueType {
                key: key.to_string(),
                detail: "arrays of arrays are not supported".into(),
            });
        }
        t => {
            return Err(GgufError::BadValueType {
                key: key.to_string(),
                detail: format!("unknown array element type {t}"),
            });
        }
    })
}

fn alignment_of(metadata: &[(String, GgufValue)]) -> std::result::Result<usize, GgufError> {
    let Some((_, v)) = metadata.iter().find(|(k, _)| k == "general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let a = v.as_u64().ok_or_else(|| GgufError::BadAlignment {
        detail: format!("must be an unsigned integer, not {}", v.type_name()),
    })?;
    match usize::try_from(a) {
        Ok(a) if a.is_power_of_two() => Ok(a),
        _ => Err(GgufError::BadAlignment { detail: format!("{a} is not a power of two") }),
    }
}

/// A checked directory entry: name, dims, ggml type, dtype, offset relative to the data section,
/// byte length.
type RawTensor = (String, Vec<u64>, u32, DType, u64, usize);

fn read_tensor_infos(
    r: &mut Reader<'_>,
    n_tensors: u64,
    alignment: usize,
) -> std::result::Result<Vec<RawTensor>, GgufError> {
    // Each entry takes at least 24 bytes (name length, n_dims, type, offset).
    let mut out = Vec::with_capacity((n_tensors as usize).min(r.remaining() / 24));
    let mut seen = HashSet::new();
    for i in 0..n_tensors {
        let name = r.string(&|| format!("name of tensor #{i}"))?;
        if !seen.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { tensor: name });
        }
        let n_dims = r.u32(&|| format!("dimension count of tensor '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::BadDims {
                tensor: name,
                detail: format!("{n_dims} dimensions (n_dims), more than the {MAX_DIMS} that ggml allows"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&|| format!("dimensions of tensor '{name}'"))?);
        }
        let ggml_type = r.u32(&|| format!("type of tensor '{name}'"))?;
        let offset = r.u64(&|| format!("offset of tensor '{name}'"))?;

        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| if d > i64::MAX as u64 { None } else { acc.checked_mul(d) })
            .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok());
        let Some(n_elements) = n_elements else {
            return Err(GgufError::BadDims { tensor: name, detail: format!("dims {dims:?}: product overflows") });
        };
        let Some(dtype) = dtype_of_ggml_type(ggml_type) else {
            return Err(GgufError::UnsupportedType { tensor: name, type_id: ggml_type });
        };
        let row_len = dims.first().copied().unwrap_or(1);
        if row_len % dtype.block_len() as u64 != 0 {
            return Err(GgufError::PartialBlock { tensor: name, row_len, dtype, block: dtype.block_len() });
        }
        // Whole rows of whole blocks, so the element count is a whole number of blocks.
        let n_bytes = (n_elements / dtype.block_len() as u64)
            .checked_mul(dtype.block_bytes() as u64)
            .and_then(|b| usize::try_from(b).ok());
        let Some(n_bytes) = n_bytes else {
            return Err(GgufError::BadDims { tensor: name, detail: format!("dims {dims:?}: byte size overflows") });
        };
        if offset % alignment as u64 != 0 {
            return Err(GgufError::Misaligned { tensor: name, offset, alignment });
        }
        out.push((name, dims, ggml_type, dtype, offset, n_bytes));
    }
    Ok(out)
}
