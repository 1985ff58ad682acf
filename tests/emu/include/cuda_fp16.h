// Stand-in for CUDA's cuda_fp16.h (tests/emu/run.sh): cuda_fp8.h's stand-in holds the f16 parts.
#pragma once
#include "cuda_fp8.h"
