/* Stand-ins for the NVIDIA driver's libcuda.so.1 and TensorRT's libnvinfer.so.10, built by the tests
 * (gcc -shared) to exercise runners/gpu_probe.py's ctypes calls where no GPU is. The calls and their
 * signatures are CUDA's driver API and TensorRT's; what they report comes from the environment:
 * FAKE_CUDA_INIT (cuInit's result, default 0), FAKE_CUDA_DRIVER (cuDriverGetVersion, default 13000),
 * FAKE_CUDA_DEVICES (count, default 1), FAKE_CUDA_NAME, FAKE_CUDA_TOTAL (bytes), FAKE_CUDA_CC ("8.9"),
 * FAKE_TRT_VERSION (getInferLibVersion, default 101601). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long env(const char *name, long long fallback) {
    const char *value = getenv(name);
    return value ? atoll(value) : fallback;
}

int cuInit(unsigned int flags) { (void)flags; return (int)env("FAKE_CUDA_INIT", 0); }
int cuDriverGetVersion(int *version) { *version = (int)env("FAKE_CUDA_DRIVER", 13000); return 0; }
int cuDeviceGetCount(int *count) { *count = (int)env("FAKE_CUDA_DEVICES", 1); return 0; }
int cuDeviceGet(int *device, int ordinal) {
    if (ordinal < 0 || ordinal >= env("FAKE_CUDA_DEVICES", 1)) return 101;
    *device = ordinal;
    return 0;
}
int cuDeviceGetName(char *name, int length, int device) {
    const char *value = getenv("FAKE_CUDA_NAME");
    snprintf(name, (size_t)length, "%s", value ? value : "NVIDIA GeForce RTX 4090");
    (void)device;
    return 0;
}
int cuDeviceTotalMem_v2(size_t *bytes, int device) {
    *bytes = (size_t)env("FAKE_CUDA_TOTAL", 25382879232LL);
    (void)device;
    return 0;
}
int cuDeviceGetAttribute(int *value, int attribute, int device) {
    const char *cc = getenv("FAKE_CUDA_CC");
    int major = 8, minor = 9;
    if (cc) sscanf(cc, "%d.%d", &major, &minor);
    (void)device;
    if (attribute == 75) { *value = major; return 0; }
    if (attribute == 76) { *value = minor; return 0; }
    return 1;
}
int getInferLibVersion(void) { return (int)env("FAKE_TRT_VERSION", 101601); }
