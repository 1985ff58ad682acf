"""Independent reference for tests/eval_test.cpp: the requests lm-eval (v0.4.8, api/task.py + api/samplers.py)
forms for tiny_mc and tiny_wino, re-stated in plain Python with the real `random` and `jinja2` modules.
Run with a python3 that has jinja2 and PyYAML:  python3 make_expected.py > expected.json"""
import ast, json, random
import jinja2, yaml

env = jinja2.Environment(loader=jinja2.BaseLoader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
render = lambda t, d: env.from_string(t).render(**d)
load = lambda p: [json.loads(l) for l in open(p)]

def mc(cfg_path):
    cfg = yaml.safe_load(open(cfg_path))
    train, test = load("tiny/train.jsonl"), load("tiny/test.jsonl")
    rnd = random.Random(1234)
    text = lambda d: render(cfg["doc_to_text"], d)
    choices = lambda d: ast.literal_eval(render(cfg["doc_to_choice"], d))
    out = []
    for doc in test:
        ctx = render(cfg["description"], doc)
        shots = [x for x in rnd.sample(train, cfg["num_fewshot"]) if x != doc][: cfg["num_fewshot"]]
        for s in shots:
            ctx += text(s) + " " + str(choices(s)[s["label"]]) + "\n\n"
        ctx += text(doc)
        out.append({"requests": [[ctx, " " + c] for c in choices(doc)], "gold": doc["label"],
                    "choice_chars": [len(c) for c in choices(doc)]})
    return out

def wino():
    def proc(d):
        i = d["sentence"].index("_")
        return {"gold": {"1": 0, "2": 1}[d["answer"]], "choices": [d["sentence"][:i] + d["option1"], d["sentence"][:i] + d["option2"]],
                "target": d["sentence"][i + 1:].strip()}
    train, val = [proc(d) for d in load("tiny/wino_train.jsonl")], [proc(d) for d in load("tiny/wino.jsonl")]
    shot = train[0]
    prefix = shot["choices"][shot["gold"]] + " " + shot["target"] + "\n\n"
    return [{"requests": [[prefix + c, " " + d["target"]] for c in d["choices"]], "gold": d["gold"]} for d in val]

print(json.dumps({"tiny_mc": mc("tiny_mc.yaml"), "tiny_wino": wino()}, indent=1))
