#!/usr/bin/env python3
"""Writes random-weight XLM-RoBERTa models with bge-reranker-base's shapes (12 layers, 768 wide,
12 heads, 3072 feed-forward, 514 positions), for the retrieval benchmarks. Speed does not depend
on the weights' values, so these measure what the real models would cost, without downloading
them; they are NOT the real models and their scores mean nothing.

usage: make_xlmr_bench_models.py OUT_DIR [--layers 12] [--vocab 250002]

OUT_DIR/reranker  XLMRobertaForSequenceClassification, one label (bge-reranker-base's layout)
OUT_DIR/embedder  XLMRobertaModel + CLS pooling + Normalize (bge-m3's layout, base-sized)
OUT_DIR/docs.json 256 Chinese documents of 100-300 characters and 16 queries (random text drawn
                  from a fixed pool of government-service phrases; the same seed gives the same set)

The tokenizer is a SentencePiece-style Unigram model trained here on that text, with pieces of at
most two characters so that a document costs about as many tokens as with XLM-R's real vocabulary
(0.6-0.9 per Chinese character); the embedding table still has the real 250,002 rows, so memory is
the real model's. Its tokenizer_config.json names PreTrainedTokenizerFast, so that transformers uses
tokenizer.json as it is (transformers 5's XLMRobertaTokenizer rebuilds its own pipeline around the
vocabulary, which for this home-made vocabulary tokenises differently from tokenizer.json).
Models already written are kept; the tokenizer and the document set are rewritten.
"""
import json
import os
import random
import sys

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

PHRASES = """居住证 办理 需要 提交 身份证 居住证明 近期照片 社区服务中心 受理 营业执照 变更登记 政务服务网
全程办理 无需到现场 防汛 工作 通知 各单位 落实 值班制度 审计人员 导出 签名 日志 离线环境 核验 网格员
基层治理 矛盾纠纷 调解 12345热线 反映诉求 工作人员 三个工作日内 答复 数据安全法 政务数据 本地存储
不得擅自出境 公文处理 自动分类 摘要生成 校对修改 功能 市民 企业 申请 材料 窗口 审批 时限 公示 结果
社会保障 医疗保险 养老保险 公积金 提取 缴存 不动产 登记 户籍 迁移 出生 证明 学籍 转学 招生 政策
补贴 发放 标准 条件 流程 依据 规定 办法 条例 实施细则 第一条 第二条 第三条 根据 按照 应当 可以""".split()


def text(rng, lo, hi):
    out = ""
    while len(out) < lo:
        out += rng.choice(PHRASES)
        out += rng.choice(["，", "。", "", "", "、"])
    return out[:hi]


def main():
    out = sys.argv[1]
    layers = int(sys.argv[sys.argv.index("--layers") + 1]) if "--layers" in sys.argv else 12
    vocab = int(sys.argv[sys.argv.index("--vocab") + 1]) if "--vocab" in sys.argv else 250002
    rng = random.Random(7)
    docs = [text(rng, rng.randint(100, 300), 300) for _ in range(256)]
    queries = [text(rng, 8, 24) for _ in range(16)]
    os.makedirs(out, exist_ok=True)
    json.dump({"queries": queries, "documents": docs}, open(os.path.join(out, "docs.json"), "w"),
              ensure_ascii=False)

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=2000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                      unk_token="<unk>", show_progress=False, max_piece_length=2)
    tok.train_from_iterator(docs + queries, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    cfg = dict(vocab_size=vocab, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
               intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
               bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu")
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                  "sep_token": "</s>", "cls_token": "<s>", "pad_token": "<pad>", "unk_token": "<unk>",
                  "mask_token": "<mask>", "model_max_length": 512}
    torch.manual_seed(0)
    makers = [("reranker", lambda: XLMRobertaForSequenceClassification(XLMRobertaConfig(num_labels=1, **cfg))),
              ("embedder", lambda: XLMRobertaModel(XLMRobertaConfig(**cfg), add_pooling_layer=False))]
    for name, make in makers:
        d = os.path.join(out, name)
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            model = make()
            model.eval()
            model.save_pretrained(d, safe_serialization=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        json.dump(tok_config, open(os.path.join(d, "tokenizer_config.json"), "w"))
    d = os.path.join(out, "embedder")
    os.makedirs(os.path.join(d, "1_Pooling"), exist_ok=True)
    json.dump({"word_embedding_dimension": 768, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
              open(os.path.join(d, "1_Pooling", "config.json"), "w"))
    json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
              open(os.path.join(d, "modules.json"), "w"))
    json.dump({"max_seq_length": 512, "do_lower_case": False}, open(os.path.join(d, "sentence_bert_config.json"), "w"))
    print("ok", out)


if __name__ == "__main__":
    main()
