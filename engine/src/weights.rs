//! Named weight tensors from safetensors or GGUF files, mapped and not copied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use govbox_drivers::{Backend, DType, HostBytes, Tensor};

use crate::mmap::MappedFile;
use crate::{EngineError, Result};

/// Largest safetensors JSON header we read. Real headers are well under 1 MiB even for sharded
/// 70B checkpoints; a bigger one is a malformed or hostile file.
pub const MAX_SAFETENSORS_HEADER: usize = 16 << 20;
/// Most tensors one safetensors file may declare.
pub const MAX_SAFETENSORS_TENSORS: usize = 1 << 16;
/// Most shards a `model.safetensors.index.json` may name.
pub const MAX_SHARDS: usize = 1024;

/// One tensor's bytes and layout.
#[derive(Clone, Debug)]
pub struct WeightInfo {
    /// Storage type.
    pub dtype: DType,
    /// Row-major shape (outermost first, as in PyTorch).
    pub shape: Vec<usize>,
    /// The bytes, pointing into the mapped file.
    pub data: HostBytes,
    /// The file the tensor came from, for error messages.
    pub file: String,
}

/// The tensors of a model, by name.
#[derive(Debug, Default)]
pub struct WeightMap {
    tensors: HashMap<String, WeightInfo>,
    /// Tensors present but in a dtype govbox does not compute with: name -> (file, dtype name).
    unsupported: HashMap<String, (String, String)>,
    /// What was loaded, for error messages.
    source: String,
}

/// One entry of a safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetensorsEntry {
    /// Tensor name.
    pub name: String,
    /// The dtype as written in the file (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range in the file (absolute offsets, header included).
    pub start: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

/// Parses and validates a safetensors file's header against the file's length.
///
/// Checks: the 8-byte length prefix, the header within [`MAX_SAFETENSORS_HEADER`] and within the
/// file, valid JSON, at most [`MAX_SAFETENSORS_TENSORS`] tensors, each data range inside the data
/// section and of exactly the size that its dtype and shape need (for dtypes we know).
pub fn parse_safetensors_header(bytes: &[u8]) -> std::result::Result<Vec<SafetensorsEntry>, String> {
    if bytes.len() < 8 {
        return Err(format!("file is {} bytes, too short for the 8-byte header length", bytes.len()));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len8);
    if n > MAX_SAFETENSORS_HEADER as u64 {
        return Err(format!("header length {n} exceeds the {MAX_SAFETENSORS_HEADER}-byte limit"));
    }
    let n = n as usize;
    if 8 + n > bytes.len() {
        return Err(format!("header length {n} runs past the end of the {}-byte file (truncated?)", bytes.len()));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| format!("header is not a JSON object: {e}"))?;
    if header.len() > MAX_SAFETENSORS_TENSORS {
        return Err(format!("header declares {} tensors, over the limit of {MAX_SAFETENSORS_TENSORS}", header.len()));
    }
    let data_start = 8 + n;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::with_capacity(header.len());
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let obj = v.as_object().ok_or_else(|| format!("tensor '{name}': entry is not an object"))?;
        let dtype =
            obj.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| format!("tensor '{name}': no dtype"))?.to_string();
        let shape = obj
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| format!("tensor '{name}': no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("tensor '{name}': shape is not a list of sizes"))?;
        let offs = obj
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| format!("tensor '{name}': no data_offsets pair"))?;
        let (b, e) = match (offs[0].as_u64(), offs[1].as_u64()) {
            (Some(b), Some(e)) if b <= e => (b as usize, e as usize),
            _ => return Err(format!("tensor '{name}': bad data_offsets")),
        };
        if e > data_len {
            return Err(format!(
                "tensor '{name}': data [{b}, {e}) runs past the end of the data section ({data_len} bytes; truncated file?)"
            ));
        }
        if let Some(esize) = safetensors_elem_size(&dtype) {
            let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            match count.and_then(|c| c.checked_mul(esize)) {
                Some(need) if need == e - b => {}
                _ => {
                    return Err(format!(
                        "tensor '{name}': {dtype} shape {shape:?} does not match its {} data bytes",
                        e - b
                    ));
                }
            }
        }
        out.push(SafetensorsEntry { name, dtype, shape, start: data_start + b, end: data_start + e });
    }
    Ok(out)
}

fn safetensors_elem_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

fn safetensors_dtype(dtype: &str) -> Option<DType> {
    Some(match dtype {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        _ => return None,
    })
}

impl WeightMap {
    /// What the tensors were loaded from, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// An empty map for tensors from `source`.
    pub fn new(source: impl Into<String>) -> Self {
        Self { source: source.into(), ..Default::default() }
    }

    /// Loads one safetensors file, or every shard named by a `model.safetensors.index.json`.
    pub fn from_safetensors(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "json") {
            return Self::from_safetensors_index(path);
        }
        let mut map = Self::new(path.display().to_string());
        map.add_safetensors_file(path)?;
        Ok(map)
    }

    /// Loads the weights of a HuggingFace folder: `model.safetensors`, or the sharded index.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Self::from_safetensors(&single);
        }
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            return Self::from_safetensors_index(&index);
        }
        Err(EngineError::Format {
            file: dir.display().to_string(),
            detail: "no model.safetensors or model.safetensors.index.json".into(),
        })
    }

    fn from_safetensors_index(index: &Path) -> Result<Self> {
        let text = read_small(index, 64 << 20)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::Format {
            file: index.display().to_string(),
            detail: format!("not valid JSON: {e}"),
        })?;
        let wm = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| EngineError::Format {
            file: index.display().to_string(),
            detail: "no weight_map object".into(),
        })?;
        let mut shards: Vec<String> = wm.values().filter_map(|s| s.as_str().map(String::from)).collect();
        shards.sort();
        shards.dedup();
        if shards.len() > MAX_SHARDS {
            return Err(EngineError::Format {
                file: index.display().to_string(),
                detail: format!("{} shards, over the limit of {MAX_SHARDS}", shards.len()),
            });
        }
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut map = Self::new(index.display().to_string());
        for s in &shards {
            if s.contains('/') || s.contains('\\') || s == ".." {
                return Err(EngineError::Format {
                    file: index.display().to_string(),
                    detail: format!("shard name '{s}' is not a plain file name"),
                });
            }
            map.add_safetensors_file(&dir.join(s))?;
        }
        for (name, shard) in wm {
            if !map.tensors.contains_key(name) && !map.unsupported.contains_key(name) {
                return Err(EngineError::MissingTensor {
                    file: format!("{} (shard {})", index.display(), shard.as_str().unwrap_or("?")),
                    tensor: name.clone(),
                });
            }
        }
        Ok(map)
    }

    /// Adds every tensor of one safetensors file.
    pub fn add_safetensors_file(&mut self, path: &Path) -> Result<()> {
        let file = MappedFile::open(path)?;
        let entries = parse_safetensors_header(file.bytes())
            .map_err(|detail| EngineError::Format { file: file.name().to_string(), detail })?;
        for e in entries {
            match safetensors_dtype(&e.dtype) {
                Some(dtype) => {
                    let data = file.slice(e.start, e.end - e.start).ok_or_else(|| EngineError::Tensor {
                        file: file.name().to_string(),
                        tensor: e.name.clone(),
                        detail: "data out of bounds".into(),
                    })?;
                    self.tensors
                        .insert(e.name, WeightInfo { dtype, shape: e.shape, data, file: file.name().to_string() });
                }
                None => {
                    self.unsupported.insert(e.name, (file.name().to_string(), e.dtype));
                }
            }
        }
        Ok(())
    }

    /// Adds one tensor (GGUF loading uses this).
    pub fn insert(&mut self, name: String, info: WeightInfo) {
        self.tensors.insert(name, info);
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.unsupported.contains_key(name)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Every tensor.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &WeightInfo)> {
        self.tensors.iter()
    }

    /// A tensor by name, with an error naming it when absent or of an unusable dtype.
    pub fn get(&self, name: &str) -> Result<&WeightInfo> {
        if let Some(t) = self.tensors.get(name) {
            return Ok(t);
        }
        if let Some((file, dtype)) = self.unsupported.get(name) {
            return Err(EngineError::Tensor {
                file: file.clone(),
                tensor: name.into(),
                detail: format!("dtype {dtype} is not supported for weights (use F32, F16 or BF16)"),
            });
        }
        Err(EngineError::MissingTensor { file: self.source.clone(), tensor: name.into() })
    }

    /// A tensor that must have exactly `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&WeightInfo> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(EngineError::Tensor {
                file: t.file.clone(),
                tensor: name.into(),
                detail: format!("shape {:?} but the model config needs {:?}", t.shape, shape),
            });
        }
        Ok(t)
    }

    /// Uploads a tensor that must have exactly `shape`.
    pub fn upload(&self, backend: &dyn Backend, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_shaped(name, shape)?;
        backend.upload(t.data.clone(), t.dtype, shape).map_err(|e| EngineError::Tensor {
            file: t.file.clone(),
            tensor: name.into(),
            detail: e.to_string(),
        })
    }

    /// Uploads entry `index` along the first dimension of a tensor of shape `[parts, rest..]`
    /// (`parts` stacked experts, or the halves of a fused projection seen as `[2, rows, cols]`),
    /// as a tensor of shape `rest`, without copying on backends that keep host bytes.
    pub fn upload_part(&self, backend: &dyn Backend, name: &str, full: &[usize], index: usize) -> Result<Tensor> {
        let t = self.get(name)?;
        let bad = |detail: String| EngineError::Tensor { file: t.file.clone(), tensor: name.into(), detail };
        if t.shape.iter().product::<usize>() != full.iter().product::<usize>() || full.len() < 2 {
            return Err(bad(format!("shape {:?} but the model config needs {full:?}", t.shape)));
        }
        let rest = &full[1..];
        let row = t.dtype.row_bytes(full[full.len() - 1]).ok_or_else(|| bad(format!("{} rows", t.dtype.name())))?;
        let part = row * rest[..rest.len() - 1].iter().product::<usize>();
        if index >= full[0] || part * full[0] != t.data.len() {
            return Err(bad(format!("part {index} of {full:?} does not fit its {} bytes", t.data.len())));
        }
        let data = t.data.slice(index * part, part).ok_or_else(|| bad("part outside the data".into()))?;
        backend.upload(data, t.dtype, rest).map_err(|e| bad(e.to_string()))
    }

    /// Uploads a small tensor of exactly `shape` as `f32` after applying `f` to each value on the
    /// host (Gemma's `(1 + w)` norm weights).
    pub fn upload_mapped(
        &self,
        backend: &dyn Backend,
        name: &str,
        shape: &[usize],
        f: impl Fn(f32) -> f32,
    ) -> Result<Tensor> {
        let v: Vec<f32> = self.read_f32(name, shape)?.into_iter().map(f).collect();
        backend.upload_f32(&v, shape).map_err(|e| EngineError::Tensor {
            file: self.get(name).map(|t| t.file.clone()).unwrap_or_default(),
            tensor: name.into(),
            detail: e.to_string(),
        })
    }

    /// The values of a tensor of exactly `shape` (any weight dtype), as `f32` on the host, for
    /// the few weights the loader re-arranges.
    pub fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.get_shaped(name, shape)?;
        let bad = |detail: String| EngineError::Tensor { file: t.file.clone(), tensor: name.into(), detail };
        let n = shape.iter().product::<usize>();
        let cols = shape.last().copied().unwrap_or(1).max(1);
        let row = t
            .dtype
            .row_bytes(cols)
            .filter(|r| r * (n / cols) == t.data.len() && !matches!(t.dtype, DType::U32 | DType::I64));
        let row = row.ok_or_else(|| bad(format!("{} data of {} bytes for {shape:?}", t.dtype.name(), t.data.len())))?;
        let mut v = vec![0f32; n];
        for (src, dst) in t.data.as_slice().chunks_exact(row).zip(v.chunks_exact_mut(cols)) {
            govbox_drivers::quant::dequantize_row(t.dtype, src, dst);
        }
        Ok(v)
    }

    /// Total bytes of all usable tensors.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }
}

/// Reads a small text file (config, index) with a size cap.
pub fn read_small(path: &Path, cap: u64) -> Result<String> {
    let io = |source| EngineError::Io { path: PathBuf::from(path), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > cap {
        return Err(EngineError::Format {
            file: path.display().to_string(),
            detail: format!("{} bytes, over the {cap}-byte limit for this file", meta.len()),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_header(h: &str, data: usize) -> Vec<u8> {
        let mut v = (h.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(h.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    #[test]
    fn parses_a_valid_header() {
        let f = file_with_header(r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 16);
        let e = parse_safetensors_header(&f).unwrap();
        assert_eq!(e[0].shape, vec![2, 2]);
    }

    #[test]
    fn rejects_header_past_eof_and_truncation_and_bad_sizes() {
        let mut f = file_with_header(r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 16);
        f[0] = 0xff;
        assert!(parse_safetensors_header(&f).unwrap_err().contains("header length"));
        let f = file_with_header(r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 8);
        assert!(parse_safetensors_header(&f).unwrap_err().contains("past the end"));
        let f = file_with_header(r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#, 16);
        assert!(parse_safetensors_header(&f).unwrap_err().contains("does not match"));
        assert!(parse_safetensors_header(&[1, 2]).is_err());
    }
}
