"""Fine-tune through the OpenAI-compatible API of `modelmill up`, with the official openai client.

    modelmill up &                                   # API + web UI + a worker on http://127.0.0.1:8000
    python examples/openai_finetune.py --file train.jsonl --model smollm2-135m-instruct --suffix support

train.jsonl holds one chat example per line: {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}
(Alpaca lines work too). The script uploads it, starts the job, prints its events as they come,
then asks the new model one question.
"""

from __future__ import annotations

import argparse
import os
import time

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", required=True, help="JSONL training file")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model")
    ap.add_argument("--suffix", default="demo", help="a word in the fine-tuned model's name")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--question", default="Hello! What can you help me with?")
    args = ap.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("MODELMILL_API_KEY", "unused"))
    f = client.files.create(file=open(args.file, "rb"), purpose="fine-tune")
    print(f"uploaded {f.filename} as {f.id} ({f.bytes} bytes)")
    job = client.fine_tuning.jobs.create(model=args.model, training_file=f.id, suffix=args.suffix,
                                         hyperparameters={"n_epochs": args.epochs})
    print(f"job {job.id}: {job.status}")
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job.id)
        for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data):
            if e.id not in seen:
                seen.add(e.id)
                print(f"  {e.message}")
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.status}: {job.error.message if job.error else ''}")
    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=64, temperature=0,
                                           messages=[{"role": "user", "content": args.question}])
    print(f"{job.fine_tuned_model}: {reply.choices[0].message.content}")


if __name__ == "__main__":
    main()
