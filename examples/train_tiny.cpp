// train_tiny --data DIR --out DIR [--steps N]
// Trains a tiny LLaMA-style model with the SDK from a recipe written in code, then loads the final
// checkpoint and samples from it. DIR is a prepared dataset:
//   llm-data prepare --tokenizer byte --input data/assets/tinyshakespeare/input.txt --out DIR
#include <llm/llm.h>

#include <iostream>

int main(int argc, char** argv) {
  std::string data, out, steps = "30";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--data" && has_value) data = argv[++i];
    else if (a == "--out" && has_value) out = argv[++i];
    else if (a == "--steps" && has_value) steps = argv[++i];
    else {
      std::cerr << "usage: train_tiny --data DIR --out DIR [--steps N]\n";
      return 2;
    }
  }
  try {
    const llm::TrainConfig config = llm::TrainConfig::from_yaml(R"(
model: {arch: llama, vocab_size: auto, max_seq_len: 64, dim: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, hidden_dim: 64}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, schedule: cosine, warmup_steps: 5}
train: {batch_size: 8, seq_len: 32, eval_interval: 0, seed: 1}
log: {interval: 10}
)",
                                                                {"data.train=" + data, "checkpoint.dir=" + out, "train.max_steps=" + steps});
    const llm::TrainResult result = llm::pretrain(config);
    std::cout << "trained " << result.steps << " steps, final loss " << result.final_loss << ", checkpoint "
              << result.checkpoint << "\n";

    llm::Model model = llm::Model::from_pretrained(result.checkpoint);
    llm::GenerateOptions gen;
    gen.max_tokens = 40;
    gen.seed = 1;
    std::cout << "sample: " << model.generate("ROMEO:", gen).text << "\n";
  } catch (const llm::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
