//! The CUDA backend, compiled at run time by NVRTC and loaded through cudarc (feature `cuda`).
//! Not written yet.
