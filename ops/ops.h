// Every op of the framework, for code that uses many (models, trainer, tests).
#pragma once

#include "ops/conv.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/index.h"
#include "ops/loss.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/op_list.h"
#include "ops/reduce.h"
#include "ops/shape.h"
#include "ops/softmax.h"
