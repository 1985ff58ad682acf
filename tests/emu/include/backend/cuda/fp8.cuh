// Stand-in for src/backend/cuda/fp8.cuh (tests/emu/run.sh): the kernels of fp8_gemv.cu need none of its
// launchers or cuBLASLt.
#pragma once
#include "backend/cuda/kernels.cuh"
