"""Synthetic multiple-choice tasks shaped like MMLU (5 fixed shots, 4 one-letter answers), HellaSwag (10 random
shots, 4 sentence endings) and ARC (25 random shots, short answers), for timing `bamba eval` with shared contexts
and forks against the naive path (each choice its own sequence). Usage:
    python3 bench/eval_speed.py DIR      # writes DIR/tasks/*.yaml and DIR/data/synth/*.jsonl
    bamba eval --preset bamba-9b --device cuda --tasks-dir DIR/tasks --data-dir DIR/data --tasks synth_mmlu [--naive]
The text is random words (the model is random too): only the request shapes matter here."""
import json, os, random, sys

out = sys.argv[1]
rng = random.Random(0)
WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
         "government company number group problem fact river bird song water north cold warm light").split()
def words(n): return " ".join(rng.choice(WORDS) for _ in range(n))

os.makedirs(f"{out}/tasks", exist_ok=True)
os.makedirs(f"{out}/data/synth", exist_ok=True)
def write(name, rows):
    with open(f"{out}/data/synth/{name}.jsonl", "w") as f:
        for r in rows: f.write(json.dumps(r) + "\n")

mmlu = lambda n: [{"question": words(rng.randint(30, 80)) + "?", "choices": [words(rng.randint(2, 8)) for _ in range(4)],
                   "answer": rng.randrange(4)} for _ in range(n)]
write("mmlu_dev", mmlu(5)); write("mmlu_test", mmlu(400))
swag = lambda n: [{"ctx": words(rng.randint(25, 50)), "endings": [words(rng.randint(12, 25)) for _ in range(4)],
                   "label": rng.randrange(4)} for _ in range(n)]
write("swag_train", swag(2000)); write("swag_val", swag(400))
arc = lambda n: [{"question": words(rng.randint(10, 25)) + "?", "choices": [words(rng.randint(1, 5)) for _ in range(4)],
                  "label": rng.randrange(4)} for _ in range(n)]
write("arc_train", arc(1000)); write("arc_test", arc(400))

open(f"{out}/tasks/synth_mmlu.yaml", "w").write("""task: synth_mmlu
dataset_path: synth
data_files: {dev: mmlu_dev.jsonl, test: mmlu_test.jsonl}
test_split: test
fewshot_split: dev
fewshot_config: {sampler: first_n}
num_fewshot: 5
description: "The following are multiple choice questions (with answers) about synthetic things.\\n\\n"
doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list: [{metric: acc}]
""")
open(f"{out}/tasks/synth_hellaswag.yaml", "w").write("""task: synth_hellaswag
dataset_path: synth
data_files: {train: swag_train.jsonl, validation: swag_val.jsonl}
training_split: train
validation_split: validation
num_fewshot: 10
doc_to_text: "{{ctx}}"
doc_to_choice: endings
doc_to_target: label
metric_list: [{metric: acc}, {metric: acc_norm}]
""")
open(f"{out}/tasks/synth_arc.yaml", "w").write("""task: synth_arc
dataset_path: synth
data_files: {train: arc_train.jsonl, test: arc_test.jsonl}
training_split: train
test_split: test
num_fewshot: 25
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
metric_list: [{metric: acc}, {metric: acc_norm}]
""")
print("wrote", out)
