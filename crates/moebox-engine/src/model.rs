//! A loaded model folder: the ONNX Runtime session, what its inputs and outputs are, the
//! tokenizer and the chat template, and one forward step over a KV cache.

use std::path::{Path, PathBuf};

use moebox_config::{ArenaExtendStrategy, CudaConfig, CudnnConvAlgoSearch, ExecutionProviderKind};
use ort::{
    ep,
    memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType},
    session::{Session, builder::SessionBuilder},
    value::{DynTensor, Tensor, TensorElementType, ValueType},
};

use crate::{
    batch::BatchCache,
    chat_template::{ChatTemplate, ChatTemplateError},
    genai_config::{GenaiConfigError, ModelSpec},
    runtime::Runtime,
    tokenizer::{Tokenizer, TokenizerError},
};

/// How to open the session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub execution_provider: ExecutionProviderKind,
    /// CUDA device ordinal (`--gpu N`).
    pub device_id: i32,
    pub allow_cpu_fallback: bool,
    pub intra_op_threads: usize,
    pub cuda: CudaConfig,
}

impl SessionOptions {
    pub fn cpu() -> Self {
        Self {
            execution_provider: ExecutionProviderKind::Cpu,
            device_id: 0,
            allow_cpu_fallback: false,
            intra_op_threads: moebox_config::DEFAULT_INTRA_OP_THREADS,
            cuda: CudaConfig::default(),
        }
    }
}

/// Where the session's KV cache lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] GenaiConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
    #[error("{path}: cannot create an ONNX Runtime session: {message}")]
    Session { path: PathBuf, message: String },
    #[error(
        "cannot use the CUDA execution provider on GPU {device_id}: {message} (set engine.allow_cpu_fallback = true to run on the CPU instead)"
    )]
    Cuda { device_id: i32, message: String },
    #[error("{path}: {message}")]
    Contract { path: PathBuf, message: String },
    #[error("ONNX Runtime failed during {during}: {message}")]
    Run {
        during: &'static str,
        message: String,
    },
}

pub(crate) fn run_error(during: &'static str) -> impl Fn(ort::Error) -> ModelError {
    move |e| ModelError::Run {
        during,
        message: e.to_string(),
    }
}

/// Element types of the tensors the engine creates or reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorTypes {
    pub input_ids: TensorElementType,
    pub attention_mask: TensorElementType,
    pub kv: TensorElementType,
    pub logits: TensorElementType,
}

#[derive(Debug)]
pub struct Model {
    pub spec: ModelSpec,
    pub tokenizer: std::sync::Arc<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
    pub types: TensorTypes,
    pub device: Device,
    /// Where the KV cache lives: the session's device, except for an fp32 export on CUDA,
    /// whose GroupQueryAttention has no fp32 CUDA kernel and runs on the CPU.
    pub kv_device: Device,
    dir: PathBuf,
    session: Session,
}

impl Model {
    /// Opens a model folder: `genai_config.json`, the ONNX model, the tokenizer and the chat
    /// template. ONNX Runtime must already be loaded ([`crate::runtime::load`]).
    pub fn load(
        runtime: &Runtime,
        dir: &Path,
        options: &SessionOptions,
    ) -> Result<Self, ModelError> {
        let spec = ModelSpec::from_model_dir(dir)?;
        let tokenizer = std::sync::Arc::new(Tokenizer::from_model_dir(dir)?);
        let chat_template = ChatTemplate::from_model_dir(dir)?;
        let model_path = dir.join(&spec.filename);
        let (session, device) = open_session(&runtime.environment, &model_path, options)?;
        let types = check_contract(&spec, &session, &model_path)?;
        if tokenizer.vocab_size() > spec.vocab_size {
            return Err(ModelError::Contract {
                path: dir.join("tokenizer.json"),
                message: format!(
                    "the tokenizer has {} tokens but the model's vocabulary is {}",
                    tokenizer.vocab_size(),
                    spec.vocab_size
                ),
            });
        }
        tracing::info!(
            model = %dir.display(),
            model_type = %spec.model_type,
            layers = spec.num_layers,
            kv_type = ?types.kv,
            %device,
            "model loaded"
        );
        let kv_device = match device {
            Device::Cuda(_) if types.kv == TensorElementType::Float32 => {
                tracing::warn!(
                    "fp32 export on CUDA: GroupQueryAttention has no fp32 CUDA kernel and runs on the CPU, so the KV cache stays in host memory; export in fp16 or bf16 for the GPU"
                );
                Device::Cpu
            }
            other => other,
        };
        Ok(Self {
            spec,
            tokenizer,
            chat_template,
            types,
            device,
            kv_device,
            dir: dir.to_owned(),
            session,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    pub(crate) fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Allocates an empty KV cache for one sequence of up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ModelError> {
        KvCache::new(self, capacity)
    }

    /// Runs the model over `new_tokens` for one sequence whose first `cache.len()` positions are
    /// already in `cache`, and returns the logits of the last new position, as f32.
    pub fn forward(
        &mut self,
        cache: &mut KvCache,
        new_tokens: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let past = cache.len;
        let total = past + new_tokens.len();
        let logits = match &mut cache.storage {
            // The shared layout is the batched cache with one row: one piece of code binds
            // buffers in place for both.
            KvStorage::Shared(batch) => {
                self.forward_batch(batch, 0, new_tokens, new_tokens.len(), &[past])?
            }
            KvStorage::Growing { keys, values } => {
                if new_tokens.is_empty() || total > cache.capacity {
                    return Err(ModelError::Run {
                        during: "forward",
                        message: format!(
                            "{} new tokens after {past} do not fit a KV cache of {}",
                            new_tokens.len(),
                            cache.capacity
                        ),
                    });
                }
                let names = &self.spec.names;
                let input_ids = integer_tensor(
                    self.types.input_ids,
                    &[1, new_tokens.len() as i64],
                    new_tokens.iter().map(|&t| i64::from(t)),
                )?;
                let attention_mask = integer_tensor(
                    self.types.attention_mask,
                    &[1, total as i64],
                    std::iter::repeat_n(1, total),
                )?;
                let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
                    Vec::with_capacity(2 + 2 * keys.len());
                inputs.push((names.input_ids.clone(), input_ids.into()));
                if let Some(mask_name) = &names.attention_mask {
                    inputs.push((mask_name.clone(), attention_mask.into()));
                }
                for (layer, (key, value)) in keys.iter().zip(values.iter()).enumerate() {
                    inputs.push((names.past_key[layer].clone(), key.view().into()));
                    inputs.push((names.past_value[layer].clone(), value.view().into()));
                }
                let mut outputs = self.session.run(inputs).map_err(run_error("decoder run"))?;
                let logits = outputs
                    .get(names.logits.as_str())
                    .ok_or_else(|| ModelError::Run {
                        during: "decoder run",
                        message: format!("no `{}` output", names.logits),
                    })?;
                let logits = crate::batch::last_positions(
                    logits,
                    self.types.logits,
                    1,
                    new_tokens.len(),
                    self.spec.vocab_size,
                )?;
                for layer in 0..keys.len() {
                    let take = |outputs: &mut ort::session::SessionOutputs<'_>, name: &str| {
                        outputs
                            .remove(name)
                            .ok_or_else(|| ModelError::Run {
                                during: "decoder run",
                                message: format!("no `{name}` output"),
                            })
                            .and_then(|v| {
                                v.downcast::<ort::value::DynTensorValueType>()
                                    .map_err(run_error("reading present"))
                            })
                    };
                    keys[layer] = take(&mut outputs, &names.present_key[layer])?;
                    values[layer] = take(&mut outputs, &names.present_value[layer])?;
                }
                logits
            }
        };
        cache.len = total;
        Ok(logits)
    }
}

/// A sequence's keys and values for every layer.
///
/// Two layouts, chosen by `search.past_present_share_buffer` in `genai_config.json`:
/// *shared*, one buffer of fixed capacity per layer bound as both past input and present output
/// so ONNX Runtime writes new positions in place (the scheduler's [`BatchCache`] with one row);
/// and *growing*, where each step's presents, one position longer, become the next step's pasts
/// (sliding-window layers keep their fixed rolling buffer).
#[derive(Debug)]
pub struct KvCache {
    len: usize,
    capacity: usize,
    storage: KvStorage,
}

#[derive(Debug)]
enum KvStorage {
    Shared(BatchCache),
    Growing {
        keys: Vec<DynTensor>,
        values: Vec<DynTensor>,
    },
}

impl KvCache {
    fn new(model: &Model, capacity: usize) -> Result<Self, ModelError> {
        let storage = if model.spec.past_present_share_buffer {
            KvStorage::Shared(model.new_batch_cache(1, capacity)?)
        } else {
            let spec = &model.spec;
            let initial = |layer: usize| {
                let rows = layer_rows(spec, layer, capacity, model.kv_device).unwrap_or(0);
                let shape = [
                    1,
                    spec.num_kv_heads as i64,
                    rows as i64,
                    spec.head_size as i64,
                ];
                zeroed_tensor(&model.session, Device::Cpu, model.types.kv, &shape)
            };
            KvStorage::Growing {
                keys: (0..spec.num_layers)
                    .map(initial)
                    .collect::<Result<_, _>>()?,
                values: (0..spec.num_layers)
                    .map(initial)
                    .collect::<Result<_, _>>()?,
            }
        };
        Ok(Self {
            len: 0,
            capacity,
            storage,
        })
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Rows beyond the window that a sliding-window layer's buffer keeps, as onnxruntime-genai does
/// on the CPU: GroupQueryAttention compacts the buffer itself when it fills, and a little slack
/// makes that rarer.
pub const SLIDING_WINDOW_SLACK: usize = 16;

/// The fixed buffer size of a sliding-window layer, `None` for a full-attention layer.
///
/// The exporter marks these layers `sliding_window_cache=1`: GroupQueryAttention keeps only the
/// most recent positions in a buffer at least `window_size` long and evicts by itself, so the
/// buffer never grows and the engine feeds back exactly the present it got.
///
/// On the CPU the buffer may be longer than the window (onnxruntime-genai adds
/// [`SLIDING_WINDOW_SLACK`]); the CUDA kernel requires it to be exactly the window.
pub(crate) fn layer_rows(
    spec: &ModelSpec,
    layer: usize,
    capacity: usize,
    kv_device: Device,
) -> Option<usize> {
    let window = spec.sliding_window.as_ref()?;
    let sliding = window.layers.is_empty() || window.layers.contains(&layer);
    let slack = match kv_device {
        Device::Cpu => SLIDING_WINDOW_SLACK,
        Device::Cuda(_) => 0,
    };
    sliding.then(|| {
        (window.window_size + slack)
            .min(capacity)
            .max(window.window_size)
            .min(spec.context_length.max(window.window_size))
    })
}

fn open_session(
    environment: &ort::environment::Environment,
    model_path: &Path,
    options: &SessionOptions,
) -> Result<(Session, Device), ModelError> {
    let session_error = |e: ort::Error| ModelError::Session {
        path: model_path.to_owned(),
        message: e.to_string(),
    };
    if !model_path.is_file() {
        return Err(ModelError::Session {
            path: model_path.to_owned(),
            message: "file not found".into(),
        });
    }
    let builder = || -> Result<SessionBuilder, ModelError> {
        let builder = Session::builder(environment).map_err(session_error)?;
        builder
            .with_intra_threads(options.intra_op_threads)
            .map_err(|e| session_error(e.into()))
    };
    match options.execution_provider {
        ExecutionProviderKind::Cpu => {
            let session = builder()?
                .commit_from_file(model_path)
                .map_err(session_error)?;
            Ok((session, Device::Cpu))
        }
        ExecutionProviderKind::Cuda => {
            let cuda = cuda_provider(options.device_id, &options.cuda);
            let attempt = builder()?
                .with_execution_providers([cuda])
                .map_err(|e| ModelError::Cuda {
                    device_id: options.device_id,
                    message: ort::Error::<()>::from(e).to_string(),
                })
                .and_then(|mut b| b.commit_from_file(model_path).map_err(session_error));
            match attempt {
                Ok(session) => Ok((session, Device::Cuda(options.device_id))),
                Err(err) if options.allow_cpu_fallback => {
                    tracing::warn!(error = %err, "CUDA execution provider unavailable; falling back to the CPU as engine.allow_cpu_fallback allows");
                    let session = builder()?
                        .commit_from_file(model_path)
                        .map_err(session_error)?;
                    Ok((session, Device::Cpu))
                }
                Err(err) => Err(err),
            }
        }
    }
}

fn cuda_provider(device_id: i32, cuda: &CudaConfig) -> ep::ExecutionProviderDispatch {
    let mut provider = ep::CUDA::default()
        .with_device_id(device_id)
        .with_arena_extend_strategy(match cuda.arena_extend_strategy {
            ArenaExtendStrategy::NextPowerOfTwo => ep::ArenaExtendStrategy::NextPowerOfTwo,
            ArenaExtendStrategy::SameAsRequested => ep::ArenaExtendStrategy::SameAsRequested,
        })
        .with_conv_algorithm_search(match cuda.cudnn_conv_algo_search {
            CudnnConvAlgoSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
            CudnnConvAlgoSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
            CudnnConvAlgoSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
        })
        .with_tf32(cuda.tf32);
    if cuda.memory_limit_bytes > 0 {
        provider = provider
            .with_memory_limit(usize::try_from(cuda.memory_limit_bytes).unwrap_or(usize::MAX));
    }
    provider.build().error_on_failure()
}

/// Checks the session against `genai_config.json` and reads the element types it uses.
fn check_contract(
    spec: &ModelSpec,
    session: &Session,
    path: &Path,
) -> Result<TensorTypes, ModelError> {
    let contract = |message: String| ModelError::Contract {
        path: path.to_owned(),
        message,
    };
    let input = |name: &str| -> Result<(TensorElementType, Vec<i64>), ModelError> {
        let outlet = session
            .inputs()
            .iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| {
                contract(format!(
                    "the model has no input `{name}`, which genai_config.json names"
                ))
            })?;
        tensor_info(outlet.dtype())
            .ok_or_else(|| contract(format!("input `{name}` is not a tensor")))
    };
    let output = |name: &str| -> Result<(TensorElementType, Vec<i64>), ModelError> {
        let outlet = session
            .outputs()
            .iter()
            .find(|o| o.name() == name)
            .ok_or_else(|| {
                contract(format!(
                    "the model has no output `{name}`, which genai_config.json names"
                ))
            })?;
        tensor_info(outlet.dtype())
            .ok_or_else(|| contract(format!("output `{name}` is not a tensor")))
    };
    let names = &spec.names;
    let (input_ids, _) = input(&names.input_ids)?;
    let attention_mask = match &names.attention_mask {
        Some(name) => input(name)?.0,
        None => TensorElementType::Int64,
    };
    if let Some(name) = &names.position_ids
        && session.inputs().iter().any(|i| i.name() == name)
    {
        return Err(contract(format!(
            "input `{name}` (position ids) is not supported; moebox drives models whose attention derives positions from the mask (GroupQueryAttention)"
        )));
    }
    for (what, ty) in [("input_ids", input_ids), ("attention_mask", attention_mask)] {
        if !matches!(ty, TensorElementType::Int64 | TensorElementType::Int32) {
            return Err(contract(format!(
                "{what} must be int32 or int64, the model declares {ty:?}"
            )));
        }
    }
    let (kv, kv_shape) = input(&names.past_key[0])?;
    if !matches!(
        kv,
        TensorElementType::Float32 | TensorElementType::Float16 | TensorElementType::Bfloat16
    ) {
        return Err(contract(format!(
            "KV cache element type {kv:?} is not supported (f32, f16, bf16 are)"
        )));
    }
    for layer in 0..spec.num_layers {
        for name in [&names.past_key[layer], &names.past_value[layer]] {
            let (ty, shape) = input(name)?;
            if ty != kv {
                return Err(contract(format!(
                    "`{name}` is {ty:?} but `{}` is {kv:?}",
                    names.past_key[0]
                )));
            }
            check_kv_shape(name, &shape, spec).map_err(contract)?;
        }
        for name in [&names.present_key[layer], &names.present_value[layer]] {
            let (ty, shape) = output(name)?;
            if ty != kv {
                return Err(contract(format!(
                    "`{name}` is {ty:?} but the past inputs are {kv:?}"
                )));
            }
            check_kv_shape(name, &shape, spec).map_err(contract)?;
        }
    }
    let _ = kv_shape;
    let (logits, logits_shape) = output(&names.logits)?;
    if !matches!(
        logits,
        TensorElementType::Float32 | TensorElementType::Float16 | TensorElementType::Bfloat16
    ) {
        return Err(contract(format!(
            "logits element type {logits:?} is not supported"
        )));
    }
    if let Some(&vocab) = logits_shape.last()
        && vocab > 0
        && vocab as usize != spec.vocab_size
    {
        return Err(contract(format!(
            "logits have {vocab} columns but genai_config.json says vocab_size is {}",
            spec.vocab_size
        )));
    }
    Ok(TensorTypes {
        input_ids,
        attention_mask,
        kv,
        logits,
    })
}

fn check_kv_shape(name: &str, shape: &[i64], spec: &ModelSpec) -> Result<(), String> {
    if shape.len() != 4 {
        return Err(format!(
            "`{name}` has rank {}, expected [batch, kv_heads, positions, head_size]",
            shape.len()
        ));
    }
    if shape[1] > 0 && shape[1] as usize != spec.num_kv_heads {
        return Err(format!(
            "`{name}` has {} KV heads but genai_config.json says num_key_value_heads is {}",
            shape[1], spec.num_kv_heads
        ));
    }
    if shape[3] > 0 && shape[3] as usize != spec.head_size {
        return Err(format!(
            "`{name}` has head size {} but genai_config.json says head_size is {}",
            shape[3], spec.head_size
        ));
    }
    Ok(())
}

fn tensor_info(ty: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

pub(crate) fn integer_tensor(
    ty: TensorElementType,
    shape: &[i64],
    values: impl Iterator<Item = i64>,
) -> Result<DynTensor, ModelError> {
    let result = match ty {
        TensorElementType::Int32 => {
            Tensor::from_array((shape.to_vec(), values.map(|v| v as i32).collect::<Vec<_>>()))
                .map(Tensor::upcast)
        }
        _ => Tensor::from_array((shape.to_vec(), values.collect::<Vec<_>>())).map(Tensor::upcast),
    };
    result.map_err(run_error("creating inputs"))
}

/// A zero-filled tensor on `device`: zeroed on the host, copied to the GPU where needed, as
/// onnxruntime-genai does with its KV buffers.
pub(crate) fn zeroed_tensor(
    session: &Session,
    device: Device,
    ty: TensorElementType,
    shape: &[i64],
) -> Result<DynTensor, ModelError> {
    let count = shape.iter().product::<i64>().max(0) as usize;
    let host = match ty {
        TensorElementType::Float32 => {
            Tensor::from_array((shape.to_vec(), vec![0.0_f32; count])).map(Tensor::upcast)
        }
        TensorElementType::Float16 => {
            Tensor::from_array((shape.to_vec(), vec![half::f16::ZERO; count])).map(Tensor::upcast)
        }
        TensorElementType::Bfloat16 => {
            Tensor::from_array((shape.to_vec(), vec![half::bf16::ZERO; count])).map(Tensor::upcast)
        }
        other => {
            return Err(ModelError::Run {
                during: "allocating the KV cache",
                message: format!("unsupported element type {other:?}"),
            });
        }
    }
    .map_err(run_error("allocating the KV cache"))?;
    match device {
        Device::Cpu => {
            // `Tensor::from_array` memory is owned by Rust, and IoBinding can only bind outputs to
            // tensors ONNX Runtime allocated: copy into one from the session's allocator.
            let mut owned = DynTensor::new(session.allocator(), ty, shape.to_vec())
                .map_err(run_error("allocating the KV cache"))?;
            host.copy_into(&mut owned)
                .map_err(run_error("zeroing the KV cache"))?;
            Ok(owned)
        }
        Device::Cuda(id) => {
            let info = MemoryInfo::new(
                AllocationDevice::CUDA,
                id,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(run_error("allocating the KV cache"))?;
            let allocator =
                Allocator::new(session, info).map_err(run_error("allocating the KV cache"))?;
            let mut owned = DynTensor::new(&allocator, ty, shape.to_vec())
                .map_err(run_error("allocating the KV cache"))?;
            host.copy_into(&mut owned)
                .map_err(run_error("zeroing the KV cache"))?;
            Ok(owned)
        }
    }
}
