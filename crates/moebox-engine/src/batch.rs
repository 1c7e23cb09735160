//! The batched KV cache: one buffer per layer holding `rows` sequences, so sequences at
//! different positions decode together in one ONNX Runtime run.
//!
//! Layout per layer and for keys and values alike: `[rows, kv_heads, positions, head_size]`,
//! row-major, so rows `a..a+n` are one contiguous span. A run over `n` rows binds *views* of that
//! span as both the past input and the present output: GroupQueryAttention sees the same buffer
//! for both (the shared-buffer layout onnxruntime-genai uses) and writes the new positions in
//! place, with no copy of the cache per step. Each row's length comes from its attention-mask
//! row (ones, then zeros to the batch's longest row), which is how GQA derives positions.
//!
//! Sliding-window layers hold a fixed rolling buffer of `window + slack` positions per row,
//! which GQA compacts by itself; full-attention layers hold `row_capacity` positions.
//!
//! This is the one module of the engine with `unsafe`: views over a span of an ONNX Runtime
//! allocation, and binding them as inputs without the copy `ort`'s safe `bind_input` makes of
//! borrowed tensors (which would break the in-place update).

#![allow(unsafe_code)]

use std::ffi::CString;

use ort::{
    AsPointer,
    memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType},
    session::IoBinding,
    value::{DynTensor, DynTensorValueType, TensorElementType, TensorRefMut, ValueRefMut},
};

use crate::{
    genai_config::IoNames,
    model::{Device, Model, ModelError, integer_tensor, layer_rows, run_error, zeroed_tensor},
};

/// One layer's keys and values for every row.
#[derive(Debug)]
struct LayerKv {
    key: DynTensor,
    value: DynTensor,
    /// Positions per row in this layer's buffer.
    positions: usize,
}

/// KV buffers for `rows` sequences of up to `row_capacity` positions each.
#[derive(Debug)]
pub struct BatchCache {
    rows: usize,
    row_capacity: usize,
    layers: Vec<LayerKv>,
    kv_type: TensorElementType,
    device: Device,
    kv_memory: MemoryInfo<'static>,
    logits_memory: MemoryInfo<'static>,
    /// Elements of one position of one row: `kv_heads × head_size`.
    position_elems: usize,
    kv_heads: usize,
    head_size: usize,
    binding: Box<IoBinding>,
    past_key: Vec<CString>,
    past_value: Vec<CString>,
}

impl BatchCache {
    pub(crate) fn new(model: &Model, rows: usize, row_capacity: usize) -> Result<Self, ModelError> {
        let spec = &model.spec;
        if rows == 0 || row_capacity == 0 {
            return Err(ModelError::Run {
                during: "allocating the KV cache",
                message: format!("{rows} rows of {row_capacity} positions is no cache"),
            });
        }
        let mut layers = Vec::with_capacity(spec.num_layers);
        for layer in 0..spec.num_layers {
            let positions =
                layer_rows(spec, layer, row_capacity, model.kv_device).unwrap_or(row_capacity);
            let shape = [
                rows as i64,
                spec.num_kv_heads as i64,
                positions as i64,
                spec.head_size as i64,
            ];
            layers.push(LayerKv {
                key: zeroed_tensor(model.session(), model.kv_device, model.types.kv, &shape)?,
                value: zeroed_tensor(model.session(), model.kv_device, model.types.kv, &shape)?,
                positions,
            });
        }
        let kv_memory = match model.kv_device {
            Device::Cpu => MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            ),
            Device::Cuda(id) => MemoryInfo::new(
                AllocationDevice::CUDA,
                id,
                AllocatorType::Device,
                MemoryType::Default,
            ),
        }
        .map_err(run_error("allocating the KV cache"))?;
        let c_names = |names: &[String]| -> Result<Vec<CString>, ModelError> {
            names
                .iter()
                .map(|n| {
                    CString::new(n.as_str()).map_err(|_| ModelError::Run {
                        during: "binding the KV cache",
                        message: format!("input name {n:?} contains a NUL byte"),
                    })
                })
                .collect()
        };
        Ok(Self {
            rows,
            row_capacity,
            kv_type: model.types.kv,
            device: model.kv_device,
            kv_memory,
            logits_memory: MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(run_error("binding logits"))?,
            position_elems: spec.num_kv_heads * spec.head_size,
            kv_heads: spec.num_kv_heads,
            head_size: spec.head_size,
            binding: Box::new(
                model
                    .session()
                    .create_binding()
                    .map_err(run_error("creating the IO binding"))?,
            ),
            past_key: c_names(&spec.names.past_key)?,
            past_value: c_names(&spec.names.past_value)?,
            layers,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Positions one sequence may hold (prompt and completion).
    pub fn row_capacity(&self) -> usize {
        self.row_capacity
    }

    /// Bytes the cache holds on its device.
    pub fn bytes(&self) -> usize {
        let elem = element_bytes(self.kv_type);
        self.layers
            .iter()
            .map(|l| 2 * self.rows * l.positions * self.position_elems * elem)
            .sum()
    }

    /// Copies row `from` over row `to` in every layer (used to keep running rows contiguous).
    pub fn move_row(&mut self, from: usize, to: usize) -> Result<(), ModelError> {
        if from == to {
            return Ok(());
        }
        if from >= self.rows || to >= self.rows {
            return Err(ModelError::Run {
                during: "moving a KV row",
                message: format!("rows {from} → {to} outside a cache of {}", self.rows),
            });
        }
        let on_host = self.device == Device::Cpu;
        for layer in &mut self.layers {
            let row_elems = layer.positions * self.position_elems;
            let (source, target) = (from * row_elems, to * row_elems);
            for buffer in [&mut layer.key, &mut layer.value] {
                if on_host {
                    copy_within_host(buffer, self.kv_type, source..source + row_elems, target)?;
                } else {
                    // `ort`'s `copy_into` deadlocks on borrowed views (its identity-session path
                    // re-enters its own lock), so rows on the GPU move with cudaMemcpy.
                    let elem = element_bytes(self.kv_type);
                    let base = buffer.data_ptr_mut().cast::<u8>();
                    cuda::copy_device_to_device(
                        base,
                        source * elem,
                        target * elem,
                        row_elems * elem,
                        buffer_bytes(buffer, elem),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Binds rows `first..first + n` of every layer as both past input and present output.
    fn bind_rows(&mut self, names: &IoNames, first: usize, n: usize) -> Result<(), ModelError> {
        for (index, layer) in self.layers.iter().enumerate() {
            let row_elems = layer.positions * self.position_elems;
            let shape = [
                n as i64,
                self.kv_heads as i64,
                layer.positions as i64,
                self.head_size as i64,
            ];
            for (buffer, past, present) in [
                (&layer.key, &self.past_key[index], &names.present_key[index]),
                (
                    &layer.value,
                    &self.past_value[index],
                    &names.present_value[index],
                ),
            ] {
                let input = view(
                    buffer,
                    &self.kv_memory,
                    self.kv_type,
                    first * row_elems,
                    &shape,
                )?;
                bind_input_in_place(&mut self.binding, past, &input)?;
                let output = view(
                    buffer,
                    &self.kv_memory,
                    self.kv_type,
                    first * row_elems,
                    &shape,
                )?;
                self.binding
                    .bind_output(present.as_str(), output)
                    .map_err(run_error("binding the KV cache"))?;
            }
        }
        Ok(())
    }
}

impl Model {
    /// Allocates a batched KV cache of `rows` sequences of up to `row_capacity` positions.
    pub fn new_batch_cache(
        &self,
        rows: usize,
        row_capacity: usize,
    ) -> Result<BatchCache, ModelError> {
        BatchCache::new(self, rows, row_capacity)
    }

    /// Runs rows `first..first + past_lens.len()` of `cache` over `seq_len` new tokens each
    /// (`tokens` row-major, `past_lens[i]` positions already cached for row `first + i`) and
    /// returns the logits of each row's last new position, `vocab_size` per row, as f32.
    pub fn forward_batch(
        &mut self,
        cache: &mut BatchCache,
        first: usize,
        tokens: &[u32],
        seq_len: usize,
        past_lens: &[usize],
    ) -> Result<Vec<f32>, ModelError> {
        let n = past_lens.len();
        let invalid = |message: String| ModelError::Run {
            during: "forward",
            message,
        };
        if n == 0 || seq_len == 0 || tokens.len() != n * seq_len {
            return Err(invalid(format!(
                "{} tokens for {n} rows of {seq_len} new positions",
                tokens.len()
            )));
        }
        if first + n > cache.rows {
            return Err(invalid(format!(
                "rows {first}..{} outside a cache of {}",
                first + n,
                cache.rows
            )));
        }
        let longest = past_lens.iter().max().copied().unwrap_or(0) + seq_len;
        if longest > cache.row_capacity {
            return Err(invalid(format!(
                "{longest} positions exceed the row capacity of {}",
                cache.row_capacity
            )));
        }
        let names = self.spec.names.clone();
        let input_ids = integer_tensor(
            self.types.input_ids,
            &[n as i64, seq_len as i64],
            tokens.iter().map(|&t| i64::from(t)),
        )?;
        // Each row: ones over its cached and new positions, then zeros up to the longest row.
        let mask = past_lens.iter().flat_map(|&past| {
            let ones = past + seq_len;
            std::iter::repeat_n(1, ones).chain(std::iter::repeat_n(0, longest - ones))
        });
        let attention_mask =
            integer_tensor(self.types.attention_mask, &[n as i64, longest as i64], mask)?;

        cache.bind_rows(&names, first, n)?;
        let binding = &mut cache.binding;
        binding
            .bind_input(names.input_ids.as_str(), &input_ids)
            .map_err(run_error("binding input_ids"))?;
        if let Some(mask_name) = &names.attention_mask {
            binding
                .bind_input(mask_name.as_str(), &attention_mask)
                .map_err(run_error("binding attention_mask"))?;
        }
        // Logits change shape with the batch: a fresh host allocation every run.
        binding
            .bind_output_to_device(names.logits.as_str(), &cache.logits_memory)
            .map_err(run_error("binding logits"))?;
        let (logits_type, vocab) = (self.types.logits, self.spec.vocab_size);
        let outputs = self
            .session_mut()
            .run_binding(binding.as_ref())
            .map_err(run_error("decoder run"))?;
        let logits = outputs
            .get(names.logits.as_str())
            .ok_or_else(|| invalid(format!("no `{}` output", names.logits)))?;
        last_positions(logits, logits_type, n, seq_len, vocab)
    }
}

/// The logits of each row's last position from `[rows, seq_len, vocab]`, as f32.
pub(crate) fn last_positions(
    value: &ort::value::DynValue,
    ty: TensorElementType,
    rows: usize,
    seq_len: usize,
    vocab: usize,
) -> Result<Vec<f32>, ModelError> {
    fn pick<T: Copy>(
        data: &[T],
        rows: usize,
        seq_len: usize,
        vocab: usize,
        f: impl Fn(T) -> f32,
    ) -> Result<Vec<f32>, ModelError> {
        if data.len() != rows * seq_len * vocab {
            return Err(ModelError::Run {
                during: "reading logits",
                message: format!("{} logits, expected {rows}×{seq_len}×{vocab}", data.len()),
            });
        }
        let mut out = Vec::with_capacity(rows * vocab);
        for row in 0..rows {
            let start = (row * seq_len + seq_len - 1) * vocab;
            out.extend(data[start..start + vocab].iter().map(|&v| f(v)));
        }
        Ok(out)
    }
    let read = run_error("reading logits");
    match ty {
        TensorElementType::Float32 => pick(
            value.try_extract_tensor::<f32>().map_err(read)?.1,
            rows,
            seq_len,
            vocab,
            |v| v,
        ),
        TensorElementType::Float16 => pick(
            value.try_extract_tensor::<half::f16>().map_err(read)?.1,
            rows,
            seq_len,
            vocab,
            half::f16::to_f32,
        ),
        TensorElementType::Bfloat16 => pick(
            value.try_extract_tensor::<half::bf16>().map_err(read)?.1,
            rows,
            seq_len,
            vocab,
            half::bf16::to_f32,
        ),
        other => Err(ModelError::Run {
            during: "reading logits",
            message: format!("unsupported logits type {other:?}"),
        }),
    }
}

/// Copies elements `range` of a host tensor to start at `target`.
fn copy_within_host(
    buffer: &mut DynTensor,
    ty: TensorElementType,
    range: std::ops::Range<usize>,
    target: usize,
) -> Result<(), ModelError> {
    let read = run_error("moving a KV row");
    match ty {
        TensorElementType::Float32 => buffer
            .try_extract_tensor_mut::<f32>()
            .map_err(read)?
            .1
            .copy_within(range, target),
        TensorElementType::Float16 => buffer
            .try_extract_tensor_mut::<half::f16>()
            .map_err(read)?
            .1
            .copy_within(range, target),
        TensorElementType::Bfloat16 => buffer
            .try_extract_tensor_mut::<half::bf16>()
            .map_err(read)?
            .1
            .copy_within(range, target),
        other => {
            return Err(ModelError::Run {
                during: "moving a KV row",
                message: format!("unsupported element type {other:?}"),
            });
        }
    }
    Ok(())
}

fn buffer_bytes(buffer: &DynTensor, elem: usize) -> usize {
    buffer
        .shape()
        .iter()
        .map(|&d| d.max(0) as usize)
        .product::<usize>()
        * elem
}

/// Device-to-device copies within one CUDA allocation, through the CUDA runtime that the CUDA
/// execution provider itself loads.
mod cuda {
    use std::sync::OnceLock;

    use crate::model::ModelError;

    /// `cudaMemcpyDeviceToDevice` in `cudaMemcpyKind`.
    const DEVICE_TO_DEVICE: i32 = 3;
    /// The CUDA 13 runtime, as onnxruntime-gpu 1.31.1 links it.
    const CUDART: &str = "libcudart.so.13";

    type Memcpy =
        unsafe extern "C" fn(*mut std::ffi::c_void, *const std::ffi::c_void, usize, i32) -> i32;

    fn library() -> Result<&'static libloading::Library, ModelError> {
        static LIBRARY: OnceLock<Result<libloading::Library, String>> = OnceLock::new();
        // SAFETY: loading the CUDA runtime runs its initialisers, which have no preconditions;
        // the CUDA execution provider has already loaded the same library into this process.
        LIBRARY
            .get_or_init(|| unsafe { libloading::Library::new(CUDART) }.map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| ModelError::Run {
                during: "moving a KV row",
                message: format!("cannot load {CUDART}: {message}"),
            })
    }

    /// Copies `len` bytes from `base + from` to `base + to`; both ranges must lie inside the
    /// device allocation of `total` bytes that starts at `base`.
    pub(super) fn copy_device_to_device(
        base: *mut u8,
        from: usize,
        to: usize,
        len: usize,
        total: usize,
    ) -> Result<(), ModelError> {
        if from.max(to) + len > total || from.abs_diff(to) < len {
            return Err(ModelError::Run {
                during: "moving a KV row",
                message: format!(
                    "bytes {from}/{to}+{len} overlap or leave an allocation of {total}"
                ),
            });
        }
        let library = library()?;
        // SAFETY: `cudaMemcpy` has exactly this signature in every CUDA runtime.
        let memcpy: libloading::Symbol<'_, Memcpy> = unsafe { library.get(b"cudaMemcpy\0") }
            .map_err(|e| ModelError::Run {
                during: "moving a KV row",
                message: format!("{CUDART} has no cudaMemcpy: {e}"),
            })?;
        // SAFETY: both ranges lie inside one live device allocation (checked above) and do not
        // overlap; cudaMemcpy is synchronous and the session is not running (the scheduler
        // calls this between runs, whose outputs were already read on the host).
        let status = unsafe {
            memcpy(
                base.add(to).cast(),
                base.add(from).cast_const().cast(),
                len,
                DEVICE_TO_DEVICE,
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(ModelError::Run {
                during: "moving a KV row",
                message: format!("cudaMemcpy failed with CUDA error {status}"),
            })
        }
    }
}

fn element_bytes(ty: TensorElementType) -> usize {
    match ty {
        TensorElementType::Float32 => 4,
        _ => 2,
    }
}

/// A tensor of `shape` over `buffer`'s memory starting `offset` elements in.
fn view<'a>(
    buffer: &'a DynTensor,
    memory: &MemoryInfo<'static>,
    ty: TensorElementType,
    offset: usize,
    shape: &[i64],
) -> Result<ValueRefMut<'a, DynTensorValueType>, ModelError> {
    let wanted: usize = shape.iter().map(|&d| d.max(0) as usize).product();
    let total: usize = buffer.shape().iter().map(|&d| d.max(0) as usize).product();
    if offset + wanted > total {
        return Err(ModelError::Run {
            during: "viewing the KV cache",
            message: format!(
                "elements {offset}..{} outside a buffer of {total}",
                offset + wanted
            ),
        });
    }
    let base = buffer.data_ptr().cast_mut().cast::<u8>();
    // SAFETY: `offset + wanted` elements lie inside `buffer` (checked above), so the pointer
    // and the view stay within the allocation; the view borrows `buffer` for its lifetime, so
    // the allocation outlives it; `memory` describes where `buffer` lives. The memory is
    // ONNX Runtime's: Rust never holds a reference into it, only ONNX Runtime reads and writes
    // it (runs and copies), one call at a time, so views that overlap cannot race.
    let data = unsafe { base.add(offset * element_bytes(ty)) }.cast::<ort::sys::c_void>();
    let shape: ort::value::Shape = shape.iter().copied().collect();
    let info = memory.clone();
    // SAFETY: as above: `data` points at `wanted` elements of type `ty` inside `buffer`.
    let made = unsafe {
        match ty {
            TensorElementType::Float32 => {
                TensorRefMut::<f32>::from_raw(info, data, shape).map(|v| v.into_dyn())
            }
            TensorElementType::Float16 => {
                TensorRefMut::<half::f16>::from_raw(info, data, shape).map(|v| v.into_dyn())
            }
            TensorElementType::Bfloat16 => {
                TensorRefMut::<half::bf16>::from_raw(info, data, shape).map(|v| v.into_dyn())
            }
            other => {
                return Err(ModelError::Run {
                    during: "viewing the KV cache",
                    message: format!("unsupported element type {other:?}"),
                });
            }
        }
    };
    made.and_then(|v| v.downcast::<DynTensorValueType>())
        .map_err(run_error("viewing the KV cache"))
}

/// Binds `value` as input `name` without copying it.
///
/// `IoBinding::bind_input` clones tensors that do not own their memory, to protect the caller
/// from aliasing; here aliasing is the point: the same span is the present output.
fn bind_input_in_place(
    binding: &mut IoBinding,
    name: &CString,
    value: &ValueRefMut<'_, DynTensorValueType>,
) -> Result<(), ModelError> {
    let api = ort::api();
    // SAFETY: the binding and value pointers are valid for the duration of the call (both are
    // borrowed); ONNX Runtime copies the OrtValue handle, which refers to the KV buffer that the
    // `BatchCache` owning both the binding and the buffer keeps alive until it is dropped.
    let status = unsafe { (api.BindInput)(binding.ptr_mut(), name.as_ptr(), value.ptr()) };
    if status.0.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status is a valid OrtStatus that we own and must release.
    let message = unsafe {
        let text = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        text
    };
    Err(ModelError::Run {
        during: "binding the KV cache",
        message,
    })
}
