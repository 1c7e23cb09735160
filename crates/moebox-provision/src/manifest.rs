//! The pinned driver / CUDA / ONNX Runtime triple, from `provisioning/manifest.toml` compiled
//! into the binary: the boot check and the image build read the same file.

use serde::Deserialize;

/// `provisioning/manifest.toml` as built.
pub const MANIFEST_TOML: &str = include_str!("../../../provisioning/manifest.toml");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Triple {
    pub onnxruntime: String,
    pub cuda_major: u32,
    pub cudnn_major: u32,
    /// The oldest driver whose CUDA version covers `cuda_major`.
    pub nvidia_driver_min: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    triple: Triple,
}

#[derive(Debug, thiserror::Error)]
#[error("provisioning/manifest.toml (built in): {0}")]
pub struct ManifestError(String);

/// The triple this binary was built with.
pub fn pinned() -> Result<Triple, ManifestError> {
    parse(MANIFEST_TOML)
}

pub fn parse(text: &str) -> Result<Triple, ManifestError> {
    toml::from_str::<Manifest>(text)
        .map(|m| m.triple)
        .map_err(|e| ManifestError(e.message().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_manifest_pins_cuda_13_and_driver_580() {
        let triple = pinned().expect("the committed manifest parses");
        assert_eq!(triple.onnxruntime, moebox_config::ONNXRUNTIME_VERSION);
        assert_eq!(triple.cuda_major, 13);
        assert!(triple.nvidia_driver_min.starts_with("580."), "{triple:?}");
    }

    #[test]
    fn a_manifest_without_the_triple_is_an_error() {
        let err = parse("[python]\nversion = \"3.11\"\n").expect_err("no triple");
        assert!(err.to_string().contains("triple"), "{err}");
    }
}
