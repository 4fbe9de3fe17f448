// loratune.hpp - a small RAII layer over libloratune's C API for C++17 programs (an example, not
// installed: copy it). Every handle is a std::unique_ptr with the matching lt_*_free as deleter, and
// every failed call throws loratune::error carrying the status and the library's message.
#pragma once

#include <loratune.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace loratune {

class error : public std::runtime_error {
  public:
    error(lt_status status, const std::string &message)
        : std::runtime_error(std::string(lt_status_string(status)) + ": " + message), status_(status) {}
    lt_status status() const noexcept { return status_; }

  private:
    lt_status status_;
};

// Throws for a failed create/load (its message is kept per thread) ...
inline void check(lt_status st) {
    if (st != LT_OK) throw error(st, lt_last_error());
}
// ... and for a failed call on a handle (its message is kept by the handle).
template <class H, class F>
void check(lt_status st, const H *h, F last_error) {
    if (st != LT_OK) throw error(st, last_error(h));
}

template <class T, void (*Free)(T *)>
struct deleter {
    void operator()(T *p) const noexcept { Free(p); }
};
using context = std::unique_ptr<lt_context, deleter<lt_context, lt_context_free>>;
using model = std::unique_ptr<lt_model, deleter<lt_model, lt_model_free>>;
using adapter = std::unique_ptr<lt_adapter, deleter<lt_adapter, lt_adapter_free>>;
using optimizer = std::unique_ptr<lt_optimizer, deleter<lt_optimizer, lt_optimizer_free>>;
using trainer = std::unique_ptr<lt_trainer, deleter<lt_trainer, lt_trainer_free>>;

inline context make_context(const char *backend = "auto", int n_threads = 0) {
    lt_context_params p;
    lt_context_params_init(&p, sizeof p);
    p.backend = backend;
    p.n_threads = n_threads;
    lt_context *c = nullptr;
    check(lt_context_create(&p, &c));
    return context(c);
}

inline model load_model(lt_context *ctx, const std::string &dir) {
    lt_model *m = nullptr;
    check(lt_model_load(ctx, dir.c_str(), nullptr, &m));
    return model(m);
}

inline adapter create_adapter(lt_model *m, const lt_adapter_params &p) {
    lt_adapter *a = nullptr;
    check(lt_adapter_create(m, &p, &a));
    return adapter(a);
}

inline optimizer create_optimizer(lt_adapter *a, const lt_optimizer_params &p) {
    lt_optimizer *o = nullptr;
    check(lt_optimizer_create(a, &p, &o));
    return optimizer(o);
}

inline trainer create_trainer(lt_model *m, lt_adapter *a, lt_optimizer *o, const lt_trainer_params *p = nullptr) {
    lt_trainer *t = nullptr;
    check(lt_trainer_create(m, a, o, p, &t));
    return trainer(t);
}

// B rows of T tokens that own their storage; rows shorter than T are padded (label -100).
struct batch {
    int rows = 0, seq_len = 0;
    std::vector<int32_t> ids, labels;

    static batch padded(const std::vector<std::vector<int32_t>> &id_rows,
                        const std::vector<std::vector<int32_t>> &label_rows, int32_t pad_id = 0) {
        batch b;
        b.rows = static_cast<int>(id_rows.size());
        for (const auto &r : id_rows) b.seq_len = std::max(b.seq_len, static_cast<int>(r.size()));
        b.ids.assign(static_cast<size_t>(b.rows) * b.seq_len, pad_id);
        b.labels.assign(b.ids.size(), -100);
        for (int i = 0; i < b.rows; i++)
            for (size_t t = 0; t < id_rows[i].size(); t++) {
                b.ids[i * b.seq_len + t] = id_rows[i][t];
                b.labels[i * b.seq_len + t] = label_rows[i][t];
            }
        return b;
    }

    lt_batch view() const { // valid while *this lives
        lt_batch v;
        lt_batch_init(&v, sizeof v);
        v.n_rows = rows;
        v.seq_len = seq_len;
        v.input_ids = ids.data();
        v.labels = labels.data();
        return v;
    }
};

inline lt_step_result step(lt_trainer *t, const batch &b) {
    lt_step_result r{};
    r.size = sizeof r;
    lt_batch v = b.view();
    check(lt_trainer_step(t, &v, &r), t, lt_trainer_last_error);
    return r;
}

inline double evaluate(lt_trainer *t, const batch &b) {
    lt_batch v = b.view();
    double sum = 0;
    int64_t n = 0;
    check(lt_trainer_evaluate(t, &v, &sum, &n), t, lt_trainer_last_error);
    return n ? sum / static_cast<double>(n) : 0.0;
}

inline void save(lt_adapter *a, const std::string &dir) {
    check(lt_adapter_save(a, dir.c_str()), a, lt_adapter_last_error);
}

} // namespace loratune
