//! Reading and writing attention inputs as safetensors files: tensors `q`, `k`, `v` (F16, BF16 or
//! F32; `[H, N, D]` or `[B, H, N, D]` in the `layout` of the metadata, HND by default), an optional
//! reference output `o`, and an optional `sm_scale` in the metadata, like `shared/data/real-qkv`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::{SafeTensors, serialize};

use crate::error::{Error, Result};
use crate::tensor::{DType, Layout, Shape, Storage, Tensor};

/// One attention input read from a file.
#[derive(Clone, Debug)]
pub struct QkvFile {
    pub path: PathBuf,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// `sm_scale` from the metadata, when present.
    pub sm_scale: Option<f32>,
    /// A stored reference output `o`, HND f32 values, when present.
    pub o: Option<Vec<f32>>,
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read_tensor(st: &SafeTensors<'_>, name: &str, layout: Layout, path: &Path) -> Result<Tensor> {
    let view = st.tensor(name).map_err(|_| {
        format_err(
            path,
            format!("no tensor `{name}` (a q/k/v file needs q, k and v)"),
        )
    })?;
    let dims = match *view.shape() {
        [h, n, d] => [1, h, n, d],
        [b, h, n, d] => [b, h, n, d],
        ref other => {
            return Err(format_err(
                path,
                format!(
                    "tensor `{name}` has shape {other:?}; expected rank 3 [H, N, D] or rank 4 [B, H, N, D] ({layout})"
                ),
            ));
        }
    };
    let dims = match (layout, view.shape().len()) {
        // a rank-3 NHD tensor is [N, H, D]
        (Layout::Nhd, 3) => [1, dims[1], dims[2], dims[3]],
        _ => dims,
    };
    let shape = Shape::from_dims(dims, layout);
    let dtype = match view.dtype() {
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        other => {
            return Err(format_err(
                path,
                format!("tensor `{name}` has dtype {other:?}; expected F16, BF16 or F32"),
            ));
        }
    };
    let storage = Storage::from_le_bytes(dtype, view.data());
    Tensor::new(storage, shape, layout)
        .map_err(|e| format_err(path, format!("tensor `{name}`: {e}")))
}

/// Reads one q/k/v file. A missing file, tensor or a file that lies about its sizes is an error.
pub fn load_qkv(path: &Path) -> Result<QkvFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_qkv(&bytes, path)
}

/// Parses the bytes of a q/k/v safetensors file (`path` only names it in errors). Never panics,
/// whatever the bytes: the fuzz target `fuzz_safetensors` holds it to that.
pub fn parse_qkv(bytes: &[u8], path: &Path) -> Result<QkvFile> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format_err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format_err(path, format!("not a valid safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let layout = match meta.get("layout") {
        Some(l) => l
            .parse::<Layout>()
            .map_err(|e| format_err(path, format!("metadata `layout`: {e}")))?,
        None => Layout::Hnd,
    };
    let sm_scale = match meta.get("sm_scale") {
        Some(s) => Some(
            s.trim()
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| {
                    format_err(
                        path,
                        format!("metadata `sm_scale` = `{s}` is not a finite number"),
                    )
                })?,
        ),
        None => None,
    };
    let q = read_tensor(&st, "q", layout, path)?;
    let k = read_tensor(&st, "k", layout, path)?;
    let v = read_tensor(&st, "v", layout, path)?;
    let o = match st.tensor("o") {
        Ok(_) => {
            let o = read_tensor(&st, "o", layout, path)?;
            if o.shape() != q.shape() {
                return Err(format_err(
                    path,
                    format!(
                        "tensor `o` has shape {}, expected q's {}",
                        o.shape(),
                        q.shape()
                    ),
                ));
            }
            Some(o.to_f32_hnd())
        }
        Err(_) => None,
    };
    Ok(QkvFile {
        path: path.to_path_buf(),
        q,
        k,
        v,
        sm_scale,
        o,
    })
}

/// The `.safetensors` files of a directory, sorted; or the path itself when it is a file.
pub fn list_inputs(path: &Path) -> Result<Vec<PathBuf>> {
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Io {
            path: path.display().to_string(),
            reason: "directory holds no .safetensors file".into(),
        });
    }
    Ok(files)
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
    }
}

/// Serializes q, k, v (rank 4, in their layout) and optional metadata into safetensors bytes.
pub fn qkv_to_bytes(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let raw: Vec<(&str, &Tensor, Vec<u8>)> = [("q", q), ("k", k), ("v", v)]
        .into_iter()
        .map(|(n, t)| (n, t, t.storage().to_le_bytes()))
        .collect();
    let mut views = Vec::new();
    for (name, t, bytes) in &raw {
        let view = TensorView::new(
            st_dtype(t.dtype()),
            t.shape().dims(t.layout()).to_vec(),
            bytes,
        )
        .map_err(|e| Error::shape("safetensors", "a consistent tensor", e))?;
        views.push((*name, view));
    }
    let mut meta = metadata;
    meta.entry("layout".into())
        .or_insert_with(|| q.layout().name().to_string());
    serialize(views, Some(meta)).map_err(|e| Error::shape("safetensors", "serializable tensors", e))
}
