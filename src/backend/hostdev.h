/*
 * hostdev.h - LT_HOST_DEVICE marks a small function of backend/ that every backend runs as it is: on the
 * host (C, the CPU backend and the reference) and, compiled by nvcc, on a CUDA device. It is what keeps
 * the data and arithmetic two backends must agree on bit for bit written once.
 */
#ifndef LT_HOSTDEV_H
#define LT_HOSTDEV_H

#ifdef __CUDACC__
#define LT_HOST_DEVICE __host__ __device__
#else
#define LT_HOST_DEVICE
#endif

#endif /* LT_HOSTDEV_H */
