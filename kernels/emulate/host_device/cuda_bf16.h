// The host device compiles the kernels with shim.h in place of the toolkit's bf16 header.
#include "shim.h"
