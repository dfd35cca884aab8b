// Small configurations of the backbones shared by the model tests.
#pragma once

#include <string>

#include "models/config.h"

namespace resona::testing {

// A small configuration of each backbone that still has several heads, groups and chunks
// (T = 11 with chunk 4: two full chunks and a partial one).
inline models::ModelConfig small_config(const std::string& name) {
  models::ModelConfig c;
  c.name = name;
  c.vocab_size = 37;
  c.hidden_size = 32;
  c.num_layers = 2;
  c.intermediate_size = 48;
  c.gla.num_heads = 2;  // K 8, V 16
  c.gla.chunk_size = 4;
  c.deltanet.num_heads = 2;  // K = V = 16
  c.deltanet.chunk_size = 4;
  c.retnet.num_heads = 4;  // K 8, V 16
  c.retnet.chunk_size = 4;
  c.mamba.state_size = 4;  // di 64, rank 2
  c.mamba2.head_dim = 16;  // 4 heads
  c.mamba2.n_groups = 2;
  c.mamba2.state_size = 8;
  c.mamba2.chunk_size = 4;
  return c;
}

}  // namespace resona::testing
