// summarize --model PATH [--tokenizer SPEC] [--max-tokens N] [FILE]
// Summarizes a text file (or stdin) with the SDK's task helper: through the model's chat template
// when it has one, as a "TL;DR:" continuation otherwise.
#include <llm/llm.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

int main(int argc, char** argv) {
  std::string model_path, file;
  llm::LoadOptions load;
  llm::GenerateOptions gen;
  gen.max_tokens = 64;
  gen.temperature = 0;  // the same summary every run
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--model" && has_value) model_path = argv[++i];
    else if (a == "--tokenizer" && has_value) load.tokenizer = argv[++i];
    else if (a == "--max-tokens" && has_value) gen.max_tokens = std::stoll(argv[++i]);
    else if (a[0] != '-') file = a;
    else {
      std::cerr << "usage: summarize --model PATH [--tokenizer SPEC] [--max-tokens N] [FILE]\n";
      return 2;
    }
  }
  try {
    std::stringstream text;
    if (file.empty()) {
      text << std::cin.rdbuf();
    } else {
      std::ifstream in(file);
      if (!in) throw llm::Error(file + ": cannot read the file");
      text << in.rdbuf();
    }
    llm::Model model = llm::Model::from_pretrained(model_path, load);
    std::cout << model.summarize(text.str(), gen) << "\n";
  } catch (const llm::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
