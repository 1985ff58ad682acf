# Writes cases.json: OpenAI-shaped chat requests (as a client sends them) x real templates with tool sections.
# render.py turns each into the prompt transformers' apply_chat_template produces.
import json

T1 = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
      "parameters": {"type": "object", "properties": {
          "city": {"type": "string", "description": "City name, e.g. Zürich"},
          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"}},
          "required": ["city"]}}}
T2 = {"type": "function", "function": {"name": "search_docs", "description": "Search the documentation",
      "parameters": {"type": "object", "properties": {
          "query": {"type": "string", "description": "What to look for"},
          "limit": {"type": "integer", "description": "  At most this many hits "},
          "tags": {"type": "array", "items": {"type": "string"}, "description": "Filter tags"}},
          "required": ["query"]}}}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
USER = {"role": "user", "content": "What's the weather in Zürich?"}
CALL1 = {"id": "a1B2c3D4e", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\", \"unit\": \"celsius\"}"}}
CALL2 = {"id": "Z9y8X7w6v", "type": "function",
         "function": {"name": "search_docs", "arguments": "{\"query\": \"föhn wind\", \"limit\": 3}"}}
RESULT1 = {"role": "tool", "tool_call_id": "a1B2c3D4e", "content": "{\"temp\": 21, \"sky\": \"clear\"}"}
RESULT2 = {"role": "tool", "tool_call_id": "Z9y8X7w6v", "content": "[\"Föhn is a warm, dry wind.\"]"}

def ask(sys=True):
    return [SYSTEM, USER] if sys else [USER]

def call(calls, sys=True):
    results = {"a1B2c3D4e": RESULT1, "Z9y8X7w6v": RESULT2}
    return ask(sys) + [{"role": "assistant", "content": None, "tool_calls": calls}] + [results[c["id"]] for c in calls]

TEMPLATES = {  # name: (bos_token, eos_token)
    "llama31": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama32": ("<|begin_of_text|>", "<|eot_id|>"),
    "granite30": ("<|end_of_text|>", "<|end_of_text|>"),
    "granite31": ("<|end_of_text|>", "<|end_of_text|>"),
    "granite33": ("<|end_of_text|>", "<|end_of_text|>"),
    "granite40": ("<|end_of_text|>", "<|end_of_text|>"),
    "qwen25": (None, "<|im_end|>"),
    "hermes2pro": ("<|begin_of_text|>", "<|im_end|>"),
    "mistral_nemo": ("<s>", "</s>"),
}
single_call = {"llama31", "llama32"}  # these templates refuse more than one call per message
cases = []
for name, (bos, eos) in TEMPLATES.items():
    def add(case, request):
        cases.append({"name": f"{name}_{case}", "template": f"templates/{name}.jinja", "bos_token": bos,
                      "eos_token": eos, "request": request})
    kw = {"date_string": "05 Dec 2026"} if name == "llama32" else {}
    add("ask", {"messages": ask(), "tools": [T1, T2], **({"chat_template_kwargs": kw} if kw else {})})
    add("call", {"messages": call([CALL1]), "tools": [T1, T2], **({"chat_template_kwargs": kw} if kw else {})})
    if name not in single_call:
        add("parallel", {"messages": call([CALL1, CALL2]), "tools": [T1, T2]})
    add("no_tools", {"messages": ask(), **({"chat_template_kwargs": kw} if kw else {})})
# Template switches through chat_template_kwargs
cases.append({"name": "llama31_tools_in_system", "template": "templates/llama31.jinja", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|eot_id|>", "request": {"messages": call([CALL1]), "tools": [T1],
                                                     "chat_template_kwargs": {"tools_in_user_message": False}}})
# Granite 4.0 with tools and documents together
cases.append({"name": "granite40_documents", "template": "templates/granite40.jinja", "bos_token": "<|end_of_text|>",
              "eos_token": "<|end_of_text|>",
              "request": {"messages": ask(False), "tools": [T1],
                          "documents": [{"doc_id": "1", "title": "Alps", "text": "Föhn is a warm wind."}]}})
json.dump(cases, open("cases.json", "w"), ensure_ascii=False, indent=1)
print(len(cases), "cases")
