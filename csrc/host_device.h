// OBD_HD: a function for the host and, compiled by nvcc, for the device too.
#pragma once

#if defined(__CUDACC__)
#define OBD_HD __host__ __device__ __forceinline__
#else
#define OBD_HD inline
#endif
