// Umbrella header of the fourierft library: FourierFT (Gao et al., ICML 2024) for LibTorch with
// the semantics of Hugging Face PEFT's FourierFT tuner. Everything lives in namespace `fourierft`.
#pragma once

#include <fourierft/config.h>
#include <fourierft/io.h>
#include <fourierft/ops.h>
#include <fourierft/layer.h>
#include <fourierft/linear.h>
#include <fourierft/model.h>
#include <fourierft/peft_names.h>
#include <fourierft/version.h>
