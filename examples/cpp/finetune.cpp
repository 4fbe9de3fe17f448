// finetune.cpp - fine-tune a LoRA adapter from C++ with RAII handles (loratune.hpp) and exceptions.
//
//   usage: finetune MODEL_DIR OUT_DIR [DATA.jsonl]        (DATA defaults to MODEL_DIR/data.jsonl)
#include "loratune.hpp"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

// The integers of the array after "key": in one JSON line (enough for these files).
static std::vector<int32_t> int_array(const std::string &line, const std::string &key) {
    std::vector<int32_t> out;
    size_t at = line.find("\"" + key + "\"");
    if (at == std::string::npos) return out;
    size_t open = line.find('[', at), close = line.find(']', open);
    std::stringstream ss(line.substr(open + 1, close - open - 1));
    for (std::string tok; std::getline(ss, tok, ',');)
        if (tok.find_first_not_of(" \t") != std::string::npos) out.push_back(std::stoi(tok));
    return out;
}

int main(int argc, char **argv) try {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0] << " MODEL_DIR OUT_DIR [DATA.jsonl]\n";
        return 2;
    }
    const std::string model_dir = argv[1], out_dir = argv[2];
    const std::string data = argc > 3 ? argv[3] : model_dir + "/data.jsonl";

    auto ctx = loratune::make_context("cpu");
    auto model = loratune::load_model(ctx.get(), model_dir);
    lt_model_info info{};
    info.size = sizeof info;
    lt_model_get_info(model.get(), &info);

    std::vector<std::vector<int32_t>> ids, labels;
    std::ifstream in(data);
    for (std::string line; std::getline(in, line);) {
        auto i = int_array(line, "input_ids");
        if (i.empty()) continue;
        auto l = int_array(line, "labels");
        labels.push_back(l.size() == i.size() ? l : i);
        ids.push_back(std::move(i));
    }
    if (ids.empty()) // no data: counting sequences
        for (int s = 0; s < 8; s++) {
            std::vector<int32_t> r;
            for (int t = 0; t < 16; t++) r.push_back(static_cast<int32_t>((s + t) % info.vocab_size));
            ids.push_back(r);
            labels.push_back(r);
        }

    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 8;
    ap.alpha = 16;
    auto adapter = loratune::create_adapter(model.get(), ap);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 2e-3f;
    op.schedule = LT_SCHED_COSINE;
    op.total_steps = 40;
    auto opt = loratune::create_optimizer(adapter.get(), op);
    auto trainer = loratune::create_trainer(model.get(), adapter.get(), opt.get());

    for (size_t step = 0; step < 40; step++) {
        size_t first = (step * 4) % ids.size(), end = std::min(first + 4, ids.size());
        std::vector<std::vector<int32_t>> bi(ids.begin() + first, ids.begin() + end),
            bl(labels.begin() + first, labels.begin() + end);
        lt_step_result r = loratune::step(trainer.get(), loratune::batch::padded(bi, bl));
        if (r.step % 10 == 0) std::printf("step %3lld  loss %.4f  lr %.2e\n", (long long)r.step, r.loss, r.lr);
    }
    std::printf("eval loss %.4f\n", loratune::evaluate(trainer.get(), loratune::batch::padded(ids, labels)));
    loratune::save(adapter.get(), out_dir);
    std::printf("saved %lld LoRA parameters to %s\n", (long long)lt_adapter_n_params(adapter.get()), out_dir.c_str());
    return 0; // handles are freed in reverse order of creation: trainer, optimizer, adapter, model, context
} catch (const loratune::error &e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
}
