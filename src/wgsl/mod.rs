//! The WGSL backend, run through wgpu (feature `wgpu`). Not written yet.
