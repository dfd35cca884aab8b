// Every op in RESONA_OPS has at least one finite-difference case and one case against
// hand-computed values; an op added to the list without them fails here.
#include <set>
#include <string>

#include "ops/op_list.h"
#include "tests/test_util.h"

namespace resona::testing {

TEST_CASE("every listed op has a gradcheck case and a values case") {
  std::set<std::string> grad, vals;
  for (const OpTestRecord& r : op_tests()) {
    (r.kind == OpTestKind::kgradcheck ? grad : vals).insert(r.op);
  }
  for (std::string_view op : kOpNames) {
    INFO("op " << op);
    CHECK_MESSAGE(grad.count(std::string(op)) == 1, "no RESONA_OP_TEST(", op, ", gradcheck, ...)");
    CHECK_MESSAGE(vals.count(std::string(op)) == 1, "no RESONA_OP_TEST(", op, ", values, ...)");
  }
}

}  // namespace resona::testing
