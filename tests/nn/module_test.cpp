// Module plumbing that loading models rests on: adopt_state takes tensors over where load_state
// copies them, and SkipParameterInit leaves new weights unwritten.
#include "engine/nn/module.h"

#include <map>

#include "tests/common/testing.h"

namespace llm::testing {
namespace {

struct Net : nn::Module {
  Net() : fc(4, 3, true) { register_module("fc", &fc); }
  nn::Linear fc;
};

TEST(Module, AdoptStateTakesTheTensorsOverLoadStateCopies) {
  Net net;
  const Tensor w = Tensor::from_vector(random_floats(12, 1), Shape{3, 4});
  // The bias as a non-contiguous view (every other element): it cannot serve as it is, so it is copied.
  const Tensor b = Tensor::from_vector(random_floats(6, 2), Shape{3, 2}).select(1, 0);
  ASSERT_FALSE(b.is_contiguous());
  net.adopt_state(std::map<std::string, Tensor>{{"fc.weight", w}, {"fc.bias", b}});
  EXPECT_EQ(net.fc.weight.raw_data(), w.raw_data()) << "the weight was copied, not taken over";
  EXPECT_TRUE(net.fc.weight.requires_grad());
  EXPECT_NE(net.fc.bias.raw_data(), b.raw_data());
  EXPECT_EQ(net.fc.bias.to_vector<float>(), b.contiguous().to_vector<float>());
  EXPECT_TRUE(net.fc.bias.requires_grad());
  EXPECT_EQ(net.named_parameters().size(), 2u);

  // load_state copies, even from a temporary: the caller's tensors stay its own.
  Net copy;
  copy.load_state(std::map<std::string, Tensor>{{"fc.weight", w}, {"fc.bias", b.contiguous()}});
  EXPECT_NE(copy.fc.weight.raw_data(), w.raw_data());
  EXPECT_EQ(copy.fc.weight.to_vector<float>(), w.to_vector<float>());

  // The strict checks are the same for both.
  Net strict;
  EXPECT_NE(error_of([&] { strict.adopt_state(std::map<std::string, Tensor>{{"fc.weight", w}}); })
                .find("missing tensor 'fc.bias'"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              strict.adopt_state(std::map<std::string, Tensor>{{"fc.weight", w.transpose(0, 1).contiguous()},
                                                              {"fc.bias", b.contiguous()}});
            }).find("tensor 'fc.weight' has shape [4, 3], but the model expects [3, 4]"),
            std::string::npos);
}

TEST(Module, SkipParameterInitIsScopedAndNests) {
  EXPECT_FALSE(nn::SkipParameterInit::active());
  {
    nn::SkipParameterInit outer;
    EXPECT_TRUE(nn::SkipParameterInit::active());
    {
      nn::SkipParameterInit inner;
      EXPECT_TRUE(nn::SkipParameterInit::active());
    }
    EXPECT_TRUE(nn::SkipParameterInit::active());
  }
  EXPECT_FALSE(nn::SkipParameterInit::active());
  // Outside one, weights start as zeros, as they always did.
  Net net;
  for (float v : net.fc.weight.to_vector<float>()) EXPECT_EQ(v, 0.f);
}

}  // namespace
}  // namespace llm::testing
