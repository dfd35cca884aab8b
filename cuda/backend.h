// Registers the CUDA device backend with core (idempotent). Linking //cuda:backend
// registers it during static initialisation; code that runs during static
// initialisation itself (e.g. test registration) calls this first.
#pragma once

namespace resona::cuda {

void register_cuda_backend();

}  // namespace resona::cuda
