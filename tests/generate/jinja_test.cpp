// The Jinja subset, feature by feature. The expected outputs of the table-like tests were produced by
// Jinja2 3.1.6 configured as transformers' apply_chat_template (trim_blocks, lstrip_blocks, loop
// controls, its tojson), so they pin this interpreter to the reference's exact text.
#include "engine/generate/jinja.h"

#include "engine/core/error.h"
#include "tests/common/testing.h"

namespace llm::jinja {
namespace {

std::string render(const std::string& source, const std::string& context_json = "{}") {
  return Template(source).render(Value::from_json(nlohmann::ordered_json::parse(context_json)));
}

std::string error_of(const std::string& source, const std::string& context_json = "{}") {
  return testing::error_of([&] { render(source, context_json); });
}

std::string repeated(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

TEST(Jinja, Output) {
  EXPECT_EQ(render("Hello {{ name }}!",
                   R"({"name": "world"})"),
            "Hello world!");
  EXPECT_EQ(render("a{# comment #}b"), "ab");
  EXPECT_EQ(render("{{ 1 }} {{ 1.5 }} {{ 2.0 }} {{ none }} {{ true }} {{ False }} {{ 'x' }} {{ [1, 'a', none, 2.5] }} {{ {'k': 'v', 'n': 1} }}"), "1 1.5 2.0 None True False x [1, 'a', None, 2.5] {'k': 'v', 'n': 1}");
  EXPECT_EQ(render("{{ 1e3 }} {{ 0.1 + 0.2 }} {{ 1e-7 }} {{ 1e20 }} {{ 10 / 4 }} {{ 10 // 4 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7.5 % 2 }}"), "1000.0 0.30000000000000004 1e-07 1e+20 2.5 2 -4 2 1024 1.5");
  EXPECT_EQ(render("{{ 'a\\nb\\t\\'q\\' \\\"d\\\" \\\\ \\u00e9' }}|{{ \"it's\" }}|{{ 'x' 'y' }}"), "a\nb\t'q' \"d\" \\ é|it's|xy");
}

TEST(Jinja, WhitespaceControl) {
  EXPECT_EQ(render("<{{- ' a ' -}}>\n  <{%- if true -%}  x  {%- endif -%}>"), "< a >\n  <x>");
  EXPECT_EQ(render("line1\n{% if true %}\nyes\n{% endif %}\nline2\n"), "line1\nyes\nline2");
  EXPECT_EQ(render("  {% if true %}\n    indented\n  {% endif %}\nend"), "    indented\nend");
  EXPECT_EQ(render("a  {% if true %}b{% endif %}  c\n"), "a  b  c");
  EXPECT_EQ(render("{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\n"), "  1\n  2\n");
  EXPECT_EQ(render("x {%+ if true %}y{% endif +%}\nz"), "x y\nz");
  EXPECT_EQ(render("  {# comment alone #}\nnext"), "next");
  EXPECT_EQ(render("{{ 'v' }}\nafter var keeps newline"), "v\nafter var keeps newline");
  EXPECT_EQ(render("{% raw %}{{ not parsed }}{% endraw %}"), "{{ not parsed }}");
}

TEST(Jinja, IfAndFor) {
  EXPECT_EQ(render("{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %}",
                   R"({"x": 2})"),
            "two");
  EXPECT_EQ(render("{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %}",
                   R"({"x": 5})"),
            "many");
  EXPECT_EQ(render("{% for m in ms %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/{{ loop.previtem }}/{{ loop.nextitem }};{% endfor %}",
                   R"({"ms": ["a","b","c"]})"),
            "1/0/3/2/True/False/3//b;2/1/2/1/False/False/3/a/c;3/2/1/0/False/True/3/b/;");
  EXPECT_EQ(render("{% for m in ms %}{{ m }}{% else %}empty{% endfor %}",
                   R"({"ms": []})"),
            "empty");
  EXPECT_EQ(render("{% for m in ms if m.role != 'system' %}{{ loop.index }}:{{ m.role }} {% endfor %}",
                   R"({"ms": [{"role":"system"},{"role":"user"},{"role":"assistant"}]})"),
            "1:user 2:assistant ");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
                   R"({"d": {"b": 1, "a": 2}})"),
            "b=1;a=2;ba");
  EXPECT_EQ(render("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}"), "0134");
  EXPECT_EQ(render("{% for i in range(1, 10, 3) %}{{ i }},{% endfor %}{% for i in range(3, 0, -1) %}{{ i }}{% endfor %}"), "1,4,7,321");
  EXPECT_EQ(render("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }} {% endfor %}"), "3 7 ");
  EXPECT_EQ(render("{% for c in 'héllo' %}{{ c }}.{% endfor %}"), "h.é.l.l.o.");
  EXPECT_EQ(render("{% for x in undefined_thing %}x{% else %}none{% endfor %}"), "none");
  EXPECT_EQ(render("{% for i in [1,2] %}{% for j in 'ab' %}{{ loop.index }}{{ j }}{% endfor %}{{ loop.index }} {% endfor %}"), "1a2b1 1a2b2 ");
}

TEST(Jinja, SetScopesAndNamespaces) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1,2] %}{% set x = i %}{{ x }}{% endfor %}{{ x }}"), "121");
  EXPECT_EQ(render("{% set ns = namespace(found=false, n=0) %}{% for i in [1,2,3] %}{% set ns.n = ns.n + i %}{% if i == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}"), "True 6");
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t %}block {{ a }}{% endset %}[{{ t }}]"), "12[block 1]");
  EXPECT_EQ(render("{% if true %}{% set y = 'in-if' %}{% endif %}{{ y }}"), "in-if");
}

TEST(Jinja, MacrosCallAndFilterBlocks) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', punct='?') }} {{ greet(name='Cy') }}"), "Hi Ann! Hi Bob? Hi Cy!");
  EXPECT_EQ(render("{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold{% endcall %}"), "<b>bold</b>");
  EXPECT_EQ(render("{% filter upper %}shout {{ 'it' }}{% endfilter %}"), "SHOUT IT");
}

TEST(Jinja, Expressions) {
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' + 'cd' }} {{ 'ab' * 3 }} {{ [1] + [2, 3] }} {{ 3 - 5 }} {{ -3 }} {{ -(2 + 3) }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }}"), "a1NoneTrue abcd ababab [1, 2, 3] -2 -3 -5 7 9");
  EXPECT_EQ(render("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 'ab' < 'b' }} {{ [1,2] == [1,2] }} {{ 2 >= 2 }} {{ 1 <= 0 }}"), "True False True True True True True False");
  EXPECT_EQ(render("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ '' and 'z' }} {{ none or none }} {{ not 0 }} {{ not 'a' }} {{ not x is defined }}"), "x y  None True False True");
  EXPECT_EQ(render("{{ 'b' in 'abc' }} {{ 2 in [1,2] }} {{ 'k' in {'k':1} }} {{ 'z' not in 'abc' }} {{ 3 not in [1,2] }} {{ 'q' in undefined_var }}"), "True True True True True False");
  EXPECT_EQ(render("{{ 'yes' if x else 'no' }} {{ 'yes' if not x else 'no' }} [{{ 'only' if x }}]",
                   R"({"x": 0})"),
            "no yes []");
  EXPECT_EQ(render("{{ xs[1:] }} {{ xs[:2] }} {{ xs[::-1] }} {{ xs[-1] }} {{ xs[1:-1] }} {{ xs[::2] }} {{ 'hello'[1:3] }} {{ 'hello'[::-1] }} {{ 'héllo'[1] }} [{{ xs[10] }}]",
                   R"({"xs": [1,2,3,4]})"),
            "[2, 3, 4] [1, 2] [4, 3, 2, 1] 4 [2, 3] [1, 3] el olleh é []");
  EXPECT_EQ(render("{{ d.a }} {{ d['a'] }} {{ d.missing }}|{{ d['b']['c'] }} {{ d.b.c }} {{ xs.0 }}",
                   R"({"d": {"a": 1, "b": {"c": 2}}, "xs": [7]})"),
            "1 1 |2 2 7");
  EXPECT_EQ(render("{{ m.content }}|{{ none_val.attr }}|",
                   R"({"m": {"role":"user"}, "none_val": null})"),
            "||");
}

TEST(Jinja, Tests) {
  EXPECT_EQ(render("{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ x is not none }} {{ n is none }} {{ x is string }} {{ 3 is number }} {{ 3.5 is number }} {{ true is number }} {{ d is mapping }} {{ xs is mapping }} {{ xs is iterable }} {{ 'a' is iterable }} {{ 3 is iterable }}",
                   R"({"x": "s", "n": null, "d": {}, "xs": []})"),
            "True False True True True True True True True True False True True False");
  EXPECT_EQ(render("{{ x is sameas none }} {{ x is sameas false }} {{ 6 is divisibleby 3 }} {{ 7 is divisibleby(3) }} {{ 3 is odd }} {{ 4 is even }} {{ 1 is equalto 1 }} {{ 5 is gt 3 }} {{ 'A' is upper }} {{ x is boolean }} {{ 2 is integer }} {{ 2.0 is float }}",
                   R"({"x": false})"),
            "False True True False True True True True True True True True");
  EXPECT_EQ(render("{{ 'ab' * true }} {{ [0] * false }} {{ 2.5 is divisibleby 2 }} {{ 3.0 is divisibleby 1.5 }}"),
            "ab [] False True");
}

TEST(Jinja, Filters) {
  EXPECT_EQ(render("{{ '  pad  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ 'hello wORLD' | title }}|{{ 'hELLO' | capitalize }}"), "pad|hi|ABC|abc|Hello World|Hello");
  EXPECT_EQ(render("{{ xs | length }} {{ 'héllo' | length }} {{ d | count }} {{ xs | first }} {{ xs | last }} {{ xs | join(', ') }} {{ xs | join }} {{ [] | first }}|",
                   R"({"xs": [1,2,3], "d": {"a":1}})"),
            "3 5 1 1 3 1, 2, 3 123 |");
  EXPECT_EQ(render("{{ x | default('dflt') }} {{ '' | default('e') }} {{ '' | default('e', true) }} {{ none | d('n') }} {{ y | d('v') }}",
                   R"({"y": "set"})"),
            "dflt  e None set");
  EXPECT_EQ(render("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ 'é\"\\n' | tojson }}|{{ [1, 2.5, none, true] | tojson }}|{{ {} | tojson }}|{{ [] | tojson(indent=4) }}",
                   R"({"d": {"name": "f", "params": {"a": [1, {"b": null}]}}})"),
            "{\"name\": \"f\", \"params\": {\"a\": [1, {\"b\": null}]}}|{\n  \"name\": \"f\",\n  \"params\": {\n    \"a\": [\n      1,\n      {\n        \"b\": null\n      }\n    ]\n  }\n}|\"é\\\"\\n\"|[1, 2.5, null, true]|{}|[]");
  EXPECT_EQ(render("{{ 3 | string }}{{ '42' | int + 1 }} {{ '4.5' | float }} {{ 'x' | int }} {{ 3.9 | int }} {{ 'a-b-a' | replace('a', 'c') }} {{ 'abc' | list }} {{ d | items | list }}",
                   R"({"d": {"a": 1}})"),
            "343 4.5 0 3 c-b-c ['a', 'b', 'c'] [('a', 1)]");
  EXPECT_EQ(render("{% for m in ms | selectattr('role', 'equalto', 'user') %}{{ m.content }}{% endfor %}|{% for m in ms | rejectattr('role', 'equalto', 'user') %}{{ m.content }}{% endfor %}|{{ ms | map(attribute='role') | join(',') }}|{{ ms | selectattr('extra') | list | length }}|{{ ['a','b'] | map('upper') | list }}",
                   R"({"ms": [{"role":"user","content":"u1"},{"role":"assistant","content":"a1","extra":1},{"role":"user","content":"u2"}]})"),
            "u1u2|a1|user,assistant,user|1|['A', 'B']");
  EXPECT_EQ(render("{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(4, true) }}|{{ 'x' | safe }}|{{ 2.567 | round(2) }} {{ 2.5 | round }} {{ -3 | abs }} {{ -2.5 | abs }} {{ 2.1 | round(0, 'ceil') }}"), "a\n  b\n\n  c|    a\n    b|x|2.57 2.0 3 2.5 3.0");
  EXPECT_EQ(render("{{ [3,1,2] | sort }} {{ [3,1,2] | sort(reverse=true) }} {{ [1,2,1] | unique | list }} {{ [1,5,2] | max }} {{ [4,2] | min }} {{ [1,2,3] | sum }} {{ [1,2] | reverse | list }} {{ 'ab' | reverse }}"), "[1, 2, 3] [3, 2, 1] [1, 2] 5 2 6 [2, 1] ba");
}

TEST(Jinja, StringAndDictMethods) {
  EXPECT_EQ(render("{{ '  s  '.strip() }}|{{ 'xsx'.strip('x') }}|{{ '  s'.lstrip() }}|{{ 's  '.rstrip() }}|{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith('bc') }} {{ 'abc'.startswith(('x', 'a')) }}|{{ 'a b  c'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }}|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}{{ 'ab cd'.title() }}|{{ 'aXa'.replace('a', 'b') }}|{{ '-'.join(['x','y']) }}|{{ 'hello'.find('l') }} {{ 'hello'.count('l') }}"), "s|s|s|s|True True True|['a', 'b', 'c'] ['a', 'b', '', 'c'] ['a', 'b,c']|ABabAb Cd|bXb|x-y|2 2");
  EXPECT_EQ(render("{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 'dv') }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }}",
                   R"({"d": {"a": 1, "b": 2}})"),
            "1 None dv ['a', 'b'] [1, 2] [('a', 1), ('b', 2)]");
}

TEST(Jinja, UndefinedAndGlobals) {
  EXPECT_EQ(render("[{{ nope }}] {{ nope is defined }} {% if nope %}t{% else %}f{% endif %} {{ nope | length }} {{ nope == nope }}"), "[] False f 0 True");
  EXPECT_EQ(render("{{ messages[0]['content'] if messages else 'empty' }} [{{ messages[5] }}]",
                   R"({"messages": []})"),
            "empty []");
  EXPECT_EQ(render("{% if messages[0].role == 'system' %}sys{% else %}nosys{% endif %}",
                   R"({"messages": [{"role": "user"}]})"),
            "nosys");
  EXPECT_EQ(render("{% set d = dict(a=1, b='x') %}{{ d }} {{ namespace(a=1).a }}"), "{'a': 1, 'b': 'x'} 1");
}
TEST(Jinja, ToolCallingTemplateOfTheCommonShape) {
  // Top-level `set messages = messages[1:]`, a default for a missing variable, `in` on a message,
  // rebinding the loop variable, neighbours by loop.index0, tojson with indent, tests in expressions.
  const std::string tpl = R"J({%- if not date_string is defined %}{% set date_string = "1 Jan 2025" %}{% endif %}
{%- if messages[0].role == 'system' %}
    {%- set system = messages[0].content | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system = 'Default.' %}
{%- endif %}
<sys>{{ system }} ({{ date_string }})
{%- if tools is not none %}

Tools:
    {%- for tool in tools %}
{{ tool.function | tojson(indent=2) }}
    {%- endfor %}
{%- endif %}
</sys>
{% for message in messages %}
    {%- if 'tool_calls' in message %}
<call>
        {%- for call in message.tool_calls %}
            {%- if call.function is defined %}{% set call = call.function %}{% endif %}
{"name": "{{ call.name }}", "arguments": {{ call.arguments | tojson }}}
        {%- endfor %}
</call>
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
<results>
        {%- endif %}
  {{ message.content if message.content is string else message.content | tojson }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
</results>
        {%- endif %}
    {%- else %}
<{{ message.role }}>{{ message.content }}</{{ message.role }}>
    {%- endif %}
{% endfor %}
{%- if add_generation_prompt %}<assistant>{% endif %})J";
  EXPECT_EQ(render(tpl, R"J({"messages": [{"role": "system", "content": " Sys. "}, {"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, {"role": "tool", "content": "22C"}, {"role": "tool", "content": {"sky": "sunny"}}, {"role": "assistant", "content": "22C and sunny."}], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}], "add_generation_prompt": false})J"),
            "<sys>Sys. (1 Jan 2025)\nTools:{\n  \"name\": \"get_weather\",\n  \"parameters\": {\n    \"type\": \"object\",\n    \"properties\": {\n      \"city\": {\n        \"type\": \"string\"\n      }\n    }\n  }\n}</sys>\n<user>Weather in Paris?</user><call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</call><results>  22C  {\"sky\": \"sunny\"}</results><assistant>22C and sunny.</assistant>");
  EXPECT_EQ(render(tpl, R"J({"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": null, "add_generation_prompt": true})J"), "<sys>Default. (1 Jan 2025)</sys>\n<user>Weather in Paris?</user><assistant>");
}

TEST(Jinja, StrftimeNowFormatsTheCurrentTime) {
  const std::string year = render("{{ strftime_now('%Y') }}");
  ASSERT_EQ(year.size(), 4u);
  EXPECT_GE(std::stoi(year), 2024);
  EXPECT_EQ(render("{{ strftime_now('%d %B %Y') | length > 8 }}"), "True");
}

TEST(Jinja, GenerationBlocksRenderTheirBody) {
  // transformers' {% generation %} marks assistant text for its own masks; here it is just its body.
  EXPECT_EQ(render("{% for m in ms %}{% if m == 'a' %}{% generation %}[{{ m }}]{% endgeneration %}{% else %}{{ m }}{% endif %}{% endfor %}",
                   R"({"ms": ["u", "a"]})"),
            "u[a]");
}

TEST(Jinja, ContextKeepsInsertionOrder) {
  EXPECT_EQ(render("{% for k, v in d | items %}{{ k }}{% endfor %} {{ d | tojson }}", R"({"d": {"z": 1, "a": 2, "m": 3}})"),
            R"(zam {"z": 1, "a": 2, "m": 3})");
}

TEST(Jinja, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(error_of("ok\n{% if x %}\n  {{ x + }}\n{% endif %}"), "template:3:10: expected an expression, got '}}'");
  EXPECT_EQ(error_of("{% for m in messages %}\n{{ m }}"),
            "template:1:4: unclosed block: expected '{% endfor %}' before the end of the template");
  EXPECT_EQ(error_of("a\n\n  {% endif %}"), "template:3:6: unexpected '{% endif %}' (no open block it could close)");
  EXPECT_EQ(error_of("{{ 'abc }}"), "template:1:4: unterminated string literal");
  EXPECT_EQ(error_of("{{ x "), "template:1:1: unclosed tag (missing '}}')");
  EXPECT_EQ(error_of("{# note"), "template:1:1: unclosed comment (missing '#}')");
  EXPECT_EQ(error_of("{% include 'x' %}"), "template:1:4: unknown or unsupported statement 'include'");
  EXPECT_EQ(error_of("{% break %}"), "template:1:4: 'break' outside a loop");
  EXPECT_EQ(error_of("{{ a ; b }}"), "template:1:6: unexpected character ';'");
  EXPECT_EQ(error_of("{{ f(a=1, 2) }}"), "template:1:11: positional argument after keyword arguments");
}

TEST(Jinja, RuntimeErrorsNameLineAndColumn) {
  EXPECT_EQ(error_of("\n {{ x | nosuchfilter }}"), "template:2:7: unknown filter 'nosuchfilter'");
  EXPECT_EQ(error_of("{{ 1 is nosuchtest }}"), "template:1:6: unknown test 'nosuchtest'");
  EXPECT_EQ(error_of("{{ missing.attr }}"), "template:1:11: cannot read attribute 'attr' of an undefined value");
  EXPECT_EQ(error_of("{{ missing['k'] }}"), "template:1:11: cannot index an undefined value");
  EXPECT_EQ(error_of("{{ nofunc() }}"), "template:1:10: 'nofunc' is undefined");
  EXPECT_EQ(error_of("{{ 'a' - 1 }}"), "template:1:8: unsupported operand types for '-': string and int");
  EXPECT_EQ(error_of("{{ 1 // 0 }}"), "template:1:6: integer division by zero");
  EXPECT_EQ(error_of("{{ x + 1 }}"), "template:1:6: undefined value in '+'");
  // Python's integers are unbounded; here overflow is an error, never undefined behaviour.
  EXPECT_EQ(render("{{ 2 ** 62 }} {{ (-2) ** 63 }} {{ 1 ** 1000000000000 }}"), "4611686018427387904 -9223372036854775808 1");
  EXPECT_EQ(error_of("{{ 2 ** 63 }}"), "template:1:6: integer overflow in '**'");
  EXPECT_EQ(error_of("{{ 9223372036854775807 + 1 }}"), "template:1:24: integer overflow in '+'");
  EXPECT_EQ(error_of("{{ 1e300 | int }}"), "template:1:10: cannot convert 1e+300 to an integer");
  EXPECT_EQ(error_of("{{ 'ab' * 200000000 }}"), "template:1:9: '*' would make a value of more than 256 MiB");
  EXPECT_EQ(error_of("{% for x in 3 %}{% endfor %}"), "template:1:13: a int value is not iterable");
  EXPECT_EQ(error_of("{% set x = 1 %}{% set x.a = 2 %}"), "template:1:19: cannot set attribute 'a' of 'x' (a int, not a namespace)");
  EXPECT_EQ(error_of("{{ {'a': x} | tojson }}"), "template:1:13: tojson: a undefined value is not JSON serializable");
  EXPECT_EQ(error_of("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"),
            "template:1:21: macro 'f' nested too deep (recursion?)");
}

TEST(Jinja, RunawayTemplatesAreErrorsNotHangsOrOutOfMemory) {
  // Nested loops over big ranges, and a macro calling itself twice per level, ran for hours.
  EXPECT_EQ(error_of("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}"),
            "template:1:33: the template ran more than 1000000 loop iterations and macro calls (an endless loop?)");
  EXPECT_NE(error_of("{% macro f(n) %}{% if n < 90 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}")
                .find("more than 1000000 loop iterations and macro calls"),
            std::string::npos);
  // Doubling a string or a list in a loop, or copying a long string into a list, exhausted memory.
  EXPECT_EQ(error_of("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"),
            "template:1:75: '~' would make a value of more than 256 MiB");
  EXPECT_EQ(error_of("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"),
            "template:1:75: '+' would make a value of more than 256 MiB");
  EXPECT_EQ(error_of("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}"),
            "template:1:75: '+' would make a value of more than 256 MiB");
  EXPECT_EQ(error_of("{{ ['x' * 10000000] * 100 }}"), "template:1:21: '*' would make a value of more than 256 MiB");
  EXPECT_EQ(error_of("{% set s = 'x' * 10000000 %}{% for i in range(30) %}{{ s }}{% endfor %}"),
            "template:1:46: the output would be longer than 256 MiB");
  // Parsing, rendering and freeing recurse per level: deep nesting overflowed the stack (a segfault).
  for (const std::string& deep : {"{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}",
                                  "{{ 1" + repeated(" + 1", 100000) + " }}", "{{ 1" + repeated("|string", 100000) + " }}",
                                  "{{ x" + repeated(".a", 100000) + " }}", "{{ " + std::string(100000, '-') + "1 }}",
                                  repeated("{% if 1 %}", 20000) + repeated("{% endif %}", 20000)})
    EXPECT_NE(error_of(deep).find("nested too deeply (more than 500 levels)"), std::string::npos) << deep.substr(0, 40);
  EXPECT_EQ(render("{{ " + std::string(100, '(') + "1" + std::string(100, ')') + repeated(" + 1", 300) + " }}"), "301");
  // A value nested deeply in a loop, or a namespace holding itself: printing, comparing or freeing it
  // recursed per level and overflowed the stack.
  const std::string nest = "{% set ns = namespace(l=[]) %}{% for i in range(300000) %}{% set ns.l = [ns.l] %}{% endfor %}";
  EXPECT_EQ(render(nest + "{{ ns.l | length }}"), "1");
  for (const char* use : {"{{ ns.l }}", "{{ ns.l | tojson }}", "{{ ns.l == ns.l }}"})
    EXPECT_NE(error_of(nest + use).find("a value nested more than 1000 levels deep (or holding itself)"), std::string::npos) << use;
  // A namespace holding itself is refused: it overflowed the stack when printed, and leaked.
  EXPECT_EQ(error_of("{% set ns = namespace() %}{% set ns.me = ns %}"), "template:1:30: cannot set 'ns.me' to a value holding the namespace itself");
  EXPECT_EQ(error_of("{% set a = namespace() %}{% set b = namespace(a=[a]) %}{% set a.b = {'x': b} %}"),
            "template:1:59: cannot set 'a.b' to a value holding the namespace itself");
  EXPECT_EQ(error_of("{% set ns = namespace() %}{% set ns.f = range %}"), "template:1:30: cannot set 'ns.f' to a function");
  // Shared parts are no cycle.
  EXPECT_EQ(render("{% set c = namespace(n=1) %}{% set b = namespace(x=c) %}{% set l = [b, b] %}{% set a = namespace() %}"
                   "{% set a.l = [l, l] %}{% set a.m = a.l %}{{ a.m[0][1].x.n }}"),
            "1");
  // Within the bounds all of it works.
  EXPECT_EQ(render("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}{{ ('ab' ~ 'c') * 2 }}"), "abcabc");
}

TEST(Jinja, RaiseExceptionCarriesTheTemplatesMessage) {
  const std::string tpl =
      "{% for m in messages %}\n"
      "{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('Unknown role: ' + m.role) }}{% endif %}\n"
      "{% endfor %}";
  EXPECT_EQ(error_of(tpl, R"({"messages": [{"role": "user"}, {"role": "robot"}]})"), "template:2:63: Unknown role: robot");
  EXPECT_EQ(render(tpl, R"({"messages": [{"role": "user"}]})"), "");
  const Template named("{{ raise_exception('no') }}", "model/tokenizer_config.json");
  EXPECT_EQ(testing::error_of([&] { named.render(Value(Value::Dict{})); }), "model/tokenizer_config.json:1:19: no");
}

TEST(Jinja, ValuesConvertFromJsonAndPrintAsPython) {
  const Value v = Value::from_json(nlohmann::json::parse(R"({"a": [1, 2.5, "x", null, true, {"b": false}]})"));
  ASSERT_TRUE(v.is_dict());
  EXPECT_EQ(v.str(), "{'a': [1, 2.5, 'x', None, True, {'b': False}]}");
  EXPECT_EQ(v.to_json(), R"({"a": [1, 2.5, "x", null, true, {"b": false}]})");
  EXPECT_EQ(Value("it's").repr(), "\"it's\"");
  EXPECT_EQ(Value(1e16).str(), "1e+16");
  EXPECT_EQ(Value(123456789012345.0).str(), "123456789012345.0");
  EXPECT_FALSE(Value().truthy());
  EXPECT_TRUE(Value(Value::List{Value()}).truthy());
  EXPECT_THROW(Template("x").render(Value(1)), Error);
}

}  // namespace
}  // namespace llm::jinja
