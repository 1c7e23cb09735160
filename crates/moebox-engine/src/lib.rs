//! The moebox engine: loads an onnxruntime-genai model folder and generates tokens with ONNX
//! Runtime. This is the only crate that links `ort`.

pub mod batch;
pub mod chat_template;
pub mod genai_config;
pub mod generate;
pub mod model;
pub mod runtime;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod stop;
pub mod tokenizer;
