// SPDX-License-Identifier: GPL-2.0
/* klp_state_v1 - cumulative test livepatch, klp_state id 1 version 1. */
#define KLPT_STATE_VERSION 1
#include "klp_state_common.h"
