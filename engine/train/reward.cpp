#include "engine/train/reward.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <regex>
#include <sstream>
#include <tuple>

#include "engine/core/error.h"
#include "engine/io/json_brief.h"

namespace llm::train {

using io::json_brief;

std::optional<double> final_number(const std::string& text) {
  size_t from = 0;
  const size_t hashes = text.rfind("####");
  if (hashes != std::string::npos) from = hashes + 4;
  std::optional<double> last;
  for (size_t i = from; i < text.size();) {
    const bool sign = text[i] == '-' && i + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[i + 1]));
    if (!sign && !std::isdigit(static_cast<unsigned char>(text[i]))) {
      ++i;
      continue;
    }
    std::string digits = sign ? "-" : "";
    size_t j = sign ? i + 1 : i;
    while (j < text.size()) {
      const char c = text[j];
      if (std::isdigit(static_cast<unsigned char>(c))) digits += c;
      else if (c == ',' && j + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[j + 1]))) {
      } else if (c == '.' && j + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[j + 1])) &&
                 digits.find('.') == std::string::npos) {
        digits += c;
      } else {
        break;
      }
      ++j;
    }
    last = std::strtod(digits.c_str(), nullptr);
    if (hashes != std::string::npos) return last;  // the number right after "####"
    i = j;
  }
  return last;
}

Reward::Reward(RewardConfig config) : config_(std::move(config)) {
  LLM_CHECK(config_.exact_number != 0 || !config_.regex.empty() || config_.length_max > 0 || !config_.program.empty(),
            "reward: none is enabled (set reward.exact_number, reward.regex, reward.length_max or reward.program)");
  if (!config_.regex.empty()) {
    try {
      std::regex check(config_.regex);
    } catch (const std::regex_error& e) {
      throw Error("reward.regex: invalid pattern \"" + config_.regex + "\": " + e.what());
    }
  }
  LLM_CHECK(config_.program_timeout_s > 0, "reward.program_timeout_s: must be positive, got ", config_.program_timeout_s);
}

std::string Reward::describe() const {
  std::ostringstream os;
  auto term = [&](double w, const std::string& name) {
    if (os.tellp() > 0) os << " + ";
    os << w << "*" << name;
  };
  if (config_.exact_number != 0) term(config_.exact_number, "exact_number(" + config_.answer_key + ")");
  if (!config_.regex.empty()) term(config_.regex_weight, "regex(" + config_.regex + ")");
  if (config_.length_max > 0) term(config_.length_weight, "length(<=" + std::to_string(config_.length_max) + ")");
  if (!config_.program.empty()) term(config_.program_weight, "program(" + config_.program + ")");
  return os.str();
}

double Reward::expected_number(const nlohmann::json& example, const std::string& where) const {
  LLM_CHECK(example.is_object() && example.contains(config_.answer_key), where, ": no \"", config_.answer_key,
            "\" field, which reward.exact_number needs (reward.answer_key names it)");
  const nlohmann::json& a = example[config_.answer_key];
  const std::optional<double> want = a.is_number() ? std::optional<double>(a.get<double>())
                                     : a.is_string() ? final_number(a.get<std::string>()) : std::nullopt;
  LLM_CHECK(want, where, ": \"", config_.answer_key, "\" holds no number for reward.exact_number: ", json_brief(a));
  return *want;
}

void Reward::check_example(const nlohmann::json& example, const std::string& where) const {
  if (config_.exact_number != 0) (void)expected_number(example, where);
}

std::vector<double> Reward::score(const std::vector<Completion>& batch) const {
  std::vector<double> total(batch.size(), 0.0);
  if (config_.exact_number != 0) {
    for (size_t i = 0; i < batch.size(); ++i) {
      const double want = expected_number(*batch[i].example, "a prompt record");
      const std::optional<double> got = final_number(batch[i].completion);
      if (got && std::abs(*got - want) <= 1e-6 * std::max(1.0, std::abs(want))) total[i] += config_.exact_number;
    }
  }
  if (!config_.regex.empty()) {
    const std::regex re(config_.regex);
    for (size_t i = 0; i < batch.size(); ++i)
      if (std::regex_search(batch[i].completion, re)) total[i] += config_.regex_weight;
  }
  if (config_.length_max > 0) {
    for (size_t i = 0; i < batch.size(); ++i) {
      const int64_t over = std::max<int64_t>(0, batch[i].completion_tokens - config_.length_max);
      total[i] -= config_.length_weight * static_cast<double>(over) / static_cast<double>(config_.length_max);
    }
  }
  if (!config_.program.empty() && !batch.empty()) {
    std::string input;
    for (const Completion& c : batch) {
      nlohmann::json line = c.example->is_object() ? *c.example : nlohmann::json::object();
      line["prompt"] = c.prompt;
      line["completion"] = c.completion;
      // Sampled text may end inside a UTF-8 sequence: invalid bytes go out as U+FFFD, not an exception.
      input += line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
    const std::string out = run_program(config_.program, input, config_.program_timeout_s);
    std::istringstream lines(out);
    std::string line;
    size_t n = 0;
    while (std::getline(lines, line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      char* end = nullptr;
      const double v = std::strtod(line.c_str(), &end);
      while (end && (*end == ' ' || *end == '\t' || *end == '\r')) ++end;
      LLM_CHECK(end != line.c_str() && end && *end == 0 && std::isfinite(v), "reward program '", config_.program,
                "': line ", n + 1, " is \"", line, "\", expected a number");
      LLM_CHECK(n < batch.size(), "reward program '", config_.program, "': printed more than ", batch.size(), " numbers");
      total[n++] += config_.program_weight * v;
    }
    LLM_CHECK(n == batch.size(), "reward program '", config_.program, "': printed ", n, " numbers for ", batch.size(),
              " completions");
  }
  return total;
}

namespace {
// Closes a descriptor once (pipes have several owners along the way).
void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}
}  // namespace

std::string run_program(const std::string& command, const std::string& input, double timeout_s) {
  int in_pipe[2], out_pipe[2], err_pipe[2];
  LLM_CHECK(::pipe(in_pipe) == 0 && ::pipe(out_pipe) == 0 && ::pipe(err_pipe) == 0, "reward program '", command,
            "': cannot create pipes: ", std::strerror(errno));
  const pid_t pid = ::fork();
  LLM_CHECK(pid >= 0, "reward program '", command, "': cannot fork: ", std::strerror(errno));
  if (pid == 0) {
    ::setpgid(0, 0);  // its own process group, so a timeout kills whatever it started too
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) ::close(fd);
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  int to_child = in_pipe[1], from_out = out_pipe[0], from_err = err_pipe[0];
  // A child that exits without reading its input must not kill us with SIGPIPE: writes use
  // non-blocking descriptors and EPIPE is handled as "the child stopped reading".
  struct sigaction ignore{}, previous{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &previous);
  ::fcntl(to_child, F_SETFL, O_NONBLOCK);

  std::string out, err;
  size_t written = 0;
  if (input.empty()) close_fd(to_child);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  bool timed_out = false;
  while (from_out >= 0 || from_err >= 0) {
    const double left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd fds[3];
    int n = 0;
    int idx_in = -1, idx_out = -1, idx_err = -1;
    if (to_child >= 0) fds[idx_in = n++] = {to_child, POLLOUT, 0};
    if (from_out >= 0) fds[idx_out = n++] = {from_out, POLLIN, 0};
    if (from_err >= 0) fds[idx_err = n++] = {from_err, POLLIN, 0};
    const int ready = ::poll(fds, static_cast<nfds_t>(n), static_cast<int>(std::min(left * 1000.0, 1000.0)) + 1);
    if (ready < 0 && errno == EINTR) continue;
    char buf[65536];
    if (idx_in >= 0 && fds[idx_in].revents) {
      const ssize_t w = ::write(to_child, input.data() + written, input.size() - written);
      if (w > 0) written += static_cast<size_t>(w);
      if ((w < 0 && errno != EAGAIN) || written == input.size()) close_fd(to_child);
    }
    for (auto [idx, fd, sink] : {std::tuple<int, int*, std::string*>{idx_out, &from_out, &out}, {idx_err, &from_err, &err}}) {
      if (idx < 0 || !fds[idx].revents) continue;
      const ssize_t r = ::read(*fd, buf, sizeof(buf));
      if (r > 0) sink->append(buf, static_cast<size_t>(r));
      else if (r == 0 || errno != EINTR) close_fd(*fd);
    }
  }
  close_fd(to_child);
  close_fd(from_out);
  close_fd(from_err);
  int status = 0;
  for (;;) {
    if (timed_out) ::kill(-pid, SIGKILL);
    const pid_t r = ::waitpid(pid, &status, timed_out ? 0 : WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) break;
    if (r == 0) {
      if (std::chrono::steady_clock::now() >= deadline) timed_out = true;
      else ::usleep(1000);
    }
  }
  ::sigaction(SIGPIPE, &previous, nullptr);
  while (!err.empty() && std::isspace(static_cast<unsigned char>(err.back()))) err.pop_back();  // no blank line after it
  if (err.size() > 2000) err = "..." + err.substr(err.size() - 2000);
  const std::string stderr_note = err.empty() ? " (no stderr)" : "; its stderr: " + err;
  LLM_CHECK(!timed_out, "reward program '", command, "': no answer within ", timeout_s, " s, killed", stderr_note);
  LLM_CHECK(!WIFSIGNALED(status), "reward program '", command, "': killed by signal ", WTERMSIG(status), stderr_note);
  LLM_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "reward program '", command, "': exited with status ",
            WEXITSTATUS(status), stderr_note);
  return out;
}

}  // namespace llm::train
