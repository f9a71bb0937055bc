//! A minimal GGUF v3 writer, for tests and tools: it builds small files, well formed or
//! deliberately malformed (wrong version, lying counts, offsets past the end). It is not
//! used to load models.

use super::{GgufArray, GgufValue, value_type};

/// Builds a GGUF file in memory.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    kvs: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
    declared_tensors: Option<u64>,
    declared_kvs: Option<u64>,
}

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
    /// Explicit relative offset; `None` places the data after the previous tensor's.
    offset: Option<u64>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty version-3 file.
    pub fn new() -> Self {
        Self {
            version: super::GGUF_VERSION,
            kvs: Vec::new(),
            tensors: Vec::new(),
            declared_tensors: None,
            declared_kvs: None,
        }
    }

    /// Writes `version` in the header instead of 3.
    pub fn version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Adds a metadata pair. `general.alignment` (an integer) also sets the data alignment.
    pub fn kv(&mut self, key: &str, value: GgufValue) -> &mut Self {
        self.kvs.push((key.to_string(), value));
        self
    }

    /// Adds a tensor with its data; the data is placed, aligned, after the previous tensor's.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(PendingTensor { name: name.into(), dims: dims.to_vec(), ggml_type, data, offset: None });
        self
    }

    /// Adds a directory entry at an explicit offset (relative to the data section) with no
    /// data written for it.
    pub fn tensor_at(&mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            data: Vec::new(),
            offset: Some(offset),
        });
        self
    }

    /// Writes these counts in the header instead of the real ones.
    pub fn declare_counts(&mut self, tensors: Option<u64>, kvs: Option<u64>) -> &mut Self {
        self.declared_tensors = tensors;
        self.declared_kvs = kvs;
        self
    }

    fn alignment(&self) -> u64 {
        self.kvs
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(super::DEFAULT_ALIGNMENT as u64)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(&super::GGUF_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.declared_tensors.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.declared_kvs.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut next = 0u64;
        let mut placed = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            let offset = match t.offset {
                Some(o) => o,
                None => {
                    let o = next.next_multiple_of(align);
                    next = o + t.data.len() as u64;
                    placed.push((o, &t.data));
                    o
                }
            };
            out.extend_from_slice(&offset.to_le_bytes());
        }
        let data_start = (out.len() as u64).next_multiple_of(align);
        for (o, data) in placed {
            out.resize((data_start + o) as usize, 0);
            out.extend_from_slice(data);
        }
        if out.len() < data_start as usize {
            out.resize(data_start as usize, 0);
        }
        out
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => value_type::U8,
        GgufValue::I8(_) => value_type::I8,
        GgufValue::U16(_) => value_type::U16,
        GgufValue::I16(_) => value_type::I16,
        GgufValue::U32(_) => value_type::U32,
        GgufValue::I32(_) => value_type::I32,
        GgufValue::F32(_) => value_type::F32,
        GgufValue::Bool(_) => value_type::BOOL,
        GgufValue::String(_) => value_type::STRING,
        GgufValue::Array(_) => value_type::ARRAY,
        GgufValue::U64(_) => value_type::U64,
        GgufValue::I64(_) => value_type::I64,
        GgufValue::F64(_) => value_type::F64,
    }
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    fn put<T: Copy, const N: usize>(out: &mut Vec<u8>, t: u32, v: &[T], le: fn(T) -> [u8; N]) {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for &x in v {
            out.extend_from_slice(&le(x));
        }
    }
    match a {
        GgufArray::U8(v) => put(out, value_type::U8, v, u8::to_le_bytes),
        GgufArray::I8(v) => put(out, value_type::I8, v, i8::to_le_bytes),
        GgufArray::U16(v) => put(out, value_type::U16, v, u16::to_le_bytes),
        GgufArray::I16(v) => put(out, value_type::I16, v, i16::to_le_bytes),
        GgufArray::U32(v) => put(out, value_type::U32, v, u32::to_le_bytes),
        GgufArray::I32(v) => put(out, value_type::I32, v, i32::to_le_bytes),
        GgufArray::F32(v) => put(out, value_type::F32, v, f32::to_le_bytes),
        GgufArray::Bool(v) => put(out, value_type::BOOL, v, |b| [u8::from(b)]),
        GgufArray::U64(v) => put(out, value_type::U64, v, u64::to_le_bytes),
        GgufArray::I64(v) => put(out, value_type::I64, v, i64::to_le_bytes),
        GgufArray::F64(v) => put(out, value_type::F64, v, f64::to_le_bytes),
        GgufArray::String(v) => {
            out.extend_from_slice(&value_type::STRING.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for s in v {
                put_str(out, s);
            }
        }
    }
}

/// Little-endian bytes of `f32` values, for tensor data.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
