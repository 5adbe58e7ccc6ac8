// SPDX-License-Identifier: GPL-2.0
/* klp_state_v2 - cumulative test livepatch, klp_state id 1 version 2. */
#define KLPT_STATE_VERSION 2
#include "klp_state_common.h"
