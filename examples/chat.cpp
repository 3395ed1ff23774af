// chat --model PATH [--tokenizer SPEC] [--system TEXT] [--max-tokens N]
// An interactive chat on stdin/stdout with the SDK: each line is a user turn, the reply streams as it
// is generated, and the conversation so far is the context of the next turn. An empty line ends it.
#include <llm/llm.h>

#include <iostream>

int main(int argc, char** argv) {
  std::string model_path, system;
  llm::LoadOptions load;
  llm::GenerateOptions gen;
  gen.max_tokens = 128;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--model" && has_value) model_path = argv[++i];
    else if (a == "--tokenizer" && has_value) load.tokenizer = argv[++i];
    else if (a == "--system" && has_value) system = argv[++i];
    else if (a == "--max-tokens" && has_value) gen.max_tokens = std::stoll(argv[++i]);
    else {
      std::cerr << "usage: chat --model PATH [--tokenizer SPEC] [--system TEXT] [--max-tokens N]\n";
      return 2;
    }
  }
  try {
    llm::Model model = llm::Model::from_pretrained(model_path, load);
    std::vector<llm::ChatMessage> history;
    if (!system.empty()) history.push_back({"system", system});
    std::string line;
    while (std::getline(std::cin, line) && !line.empty()) {
      history.push_back({"user", line});
      const llm::Completion reply = model.chat(history, gen, [](const std::string& text) {
        std::cout << text << std::flush;
        return true;
      });
      std::cout << "\n[" << reply.tokens.size() << " tokens, " << reply.finish_reason << "]\n";
      history.push_back({"assistant", reply.text});
    }
  } catch (const llm::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
