// One comparison for the engine's CUDA tests whose failure message is enough to debug from a single
// GPU run: what was compared, the max relative error (testing::max_rel_error) against the tolerance,
// and the first element off by more than tol·scale, with its value and the reference's.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "tests/common/testing.h"

namespace llm::testing {

template <class Got, class Want>
::testing::AssertionResult close_to(const std::string& what, const Got& got, const Want& want, double tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": " << got.size() << " values, expected " << want.size();
  const double err = max_rel_error(got, want);
  if (err <= tol) return ::testing::AssertionSuccess();
  double scale = 1e-6;
  for (size_t i = 0; i < want.size(); ++i) scale = std::max(scale, std::fabs(double(want[i])));
  std::ostringstream msg;
  msg << what << ": max relative error " << err << " > " << tol << " over " << want.size() << " values";
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(double(got[i]) - double(want[i]));
    if (std::isnan(e) || e > tol * scale) {
      msg << "; first bad index " << i << ": got " << double(got[i]) << ", want " << double(want[i]);
      break;
    }
  }
  return ::testing::AssertionFailure() << msg.str();
}

}  // namespace llm::testing
