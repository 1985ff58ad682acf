# The expected prompts for tests/tool_prompt_test.cpp: each case of cases.json (an OpenAI-shaped chat request as a
# client sends it) rendered by transformers' own chat template code, as apply_chat_template(messages, tools=...,
# documents=..., add_generation_prompt=True, bos_token=..., eos_token=..., **chat_template_kwargs) renders it.
#
# Before rendering, the request gets the conversions bamba serve documents (docs/chat-templates.md, as vLLM does):
# a null message content becomes "", and an assistant tool call's "arguments" JSON string becomes the object it
# encodes (templates print it with tojson or iterate it).
#
#   python3 render.py OUT_DIR    # writes OUT_DIR/expected.json
# Without transformers it falls back to jinja2 configured as transformers configures it (marked in the output).
import copy, json, os, sys
from datetime import datetime

here = os.path.dirname(os.path.abspath(__file__))
cases = json.load(open(os.path.join(here, "cases.json")))

try:
    import transformers
    from transformers.utils.chat_template_utils import render_jinja_template
    renderer = "transformers " + transformers.__version__
except Exception as e:  # local development only
    print("no transformers (", e, "): jinja2 mimic", file=sys.stderr)
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    renderer = "jinja2 " + jinja2.__version__ + " (transformers' settings)"

    def render_jinja_template(conversations, tools=None, documents=None, chat_template=None,
                              add_generation_prompt=False, **kwargs):
        def raise_exception(m):
            raise jinja2.exceptions.TemplateError(m)
        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda f: datetime.now().strftime(f)
        t = env.from_string(chat_template)
        return [t.render(messages=c, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
                         **kwargs) for c in conversations], None

def convert(request):
    msgs = copy.deepcopy(request["messages"])
    for m in msgs:
        if m.get("content") is None:
            m["content"] = ""
        for tc in m.get("tool_calls") or []:
            if isinstance(tc["function"].get("arguments"), str):
                tc["function"]["arguments"] = json.loads(tc["function"]["arguments"])
    return msgs

out = {"renderer": renderer, "prompts": {}}
for c in cases:
    req = c["request"]
    kwargs = dict(req.get("chat_template_kwargs", {}))
    for k in ("bos_token", "eos_token"):
        if c[k] is not None:
            kwargs[k] = c[k]
    tpl = open(os.path.join(here, c["template"])).read()
    try:
        rendered, _ = render_jinja_template(conversations=[convert(req)], tools=req.get("tools"),
                                            documents=req.get("documents"), chat_template=tpl,
                                            add_generation_prompt=req.get("add_generation_prompt", True), **kwargs)
        out["prompts"][c["name"]] = rendered[0]
    except Exception as e:
        out["prompts"][c["name"]] = {"error": f"{type(e).__name__}: {e}"}

# How transformers turns a plain Python function into the JSON schema a template sees (for docs/chat-templates.md).
try:
    from transformers.utils import get_json_schema
    def get_weather(city: str, unit: str = "celsius"):
        """
        Current weather in a city

        Args:
            city: City name, e.g. Zürich
            unit: Temperature unit
        """
    out["get_json_schema(get_weather)"] = get_json_schema(get_weather)
except Exception as e:
    out["get_json_schema(get_weather)"] = f"unavailable: {e}"

dst = sys.argv[1] if len(sys.argv) > 1 else here
os.makedirs(dst, exist_ok=True)
json.dump(out, open(os.path.join(dst, "expected.json"), "w"), ensure_ascii=False, indent=1)
print(renderer, len(out["prompts"]), "prompts;", sum(isinstance(v, dict) for v in out["prompts"].values()), "errors")
