//! What content filtering costs, with a generated library of 12,000 keywords: per request (the
//! questions of a four-message chat checked) and per streamed token (an answer pushed through the
//! streaming filter three characters at a time), each beside the same loop with filtering off.
//! Run by `bench/policy-filter.sh`; prints one JSON object.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use govbox_policy::{Policy, StreamFilter};

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(n)) as u32
    }
    fn cjk(&mut self) -> char {
        char::from_u32(0x4E00 + self.next(0x51A6)).unwrap_or('中')
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keywords = 12_000;
    let mut r = Lcg(7);
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("lists"))?;
    let words: Vec<String> = (0..keywords).map(|_| (0..2 + r.next(3)).map(|_| r.cjk()).collect::<String>()).collect();
    std::fs::write(dir.path().join("lists/kw.txt"), words.join("\n"))?;
    std::fs::write(
        dir.path().join("policy.toml"),
        "format = \"govbox-policy/1\"\nname = \"bench\"\nversion = \"1\"\n[normalise]\ntraditional = true\n\
         [[category]]\nid = \"c\"\naction = \"refuse\"\nrefusal = \"no\"\nkeywords = [\"lists/kw.txt\"]\n\
         patterns = [{ id = \"p\", regex = \"qq[0-9]{5,9}zz\" }]\n",
    )?;
    let t = Instant::now();
    let policy = Arc::new(Policy::load_dir(dir.path())?);
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;

    // Ordinary text: ASCII words and common characters outside the generated keywords' range.
    let common: Vec<char> = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严".chars().collect();
    let text = |r: &mut Lcg, n: usize| -> String {
        (0..n).map(|i| if i % 9 == 8 { ' ' } else { common[r.next(common.len() as u32) as usize] }).collect()
    };
    let messages: Vec<String> = (0..4).map(|_| text(&mut r, 500)).collect();
    let answer = text(&mut r, 2_000);
    let pieces: Vec<String> = answer.chars().collect::<Vec<_>>().chunks(3).map(|c| c.iter().collect()).collect();

    let reps = 2_000;
    let mut per_request = Vec::with_capacity(reps);
    let mut per_request_off = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        for m in &messages {
            black_box(policy.check_input(black_box(m)));
        }
        per_request.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for m in &messages {
            black_box(black_box(m).len());
        }
        per_request_off.push(t.elapsed().as_secs_f64());
    }
    let stream_reps = 200;
    let (mut on, mut off) = (0.0, 0.0);
    for _ in 0..stream_reps {
        let t = Instant::now();
        let mut f = StreamFilter::new(policy.clone());
        let mut out = String::new();
        for p in &pieces {
            out.push_str(&f.push(black_box(p)).text);
        }
        out.push_str(&f.finish().text);
        black_box(&out);
        on += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut out = String::new();
        for p in &pieces {
            out.push_str(black_box(p));
        }
        black_box(&out);
        off += t.elapsed().as_secs_f64();
    }
    let tokens = (pieces.len() * stream_reps) as f64;
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (mean * 1e6, v[v.len() * 99 / 100] * 1e6)
    };
    let (req_mean, req_p99) = stats(&mut per_request);
    let (off_mean, off_p99) = stats(&mut per_request_off);
    println!(
        "{}",
        serde_json::json!({
            "keywords": policy.keyword_count(),
            "compile_ms": compile_ms,
            "request_chars": messages.iter().map(|m| m.chars().count()).sum::<usize>(),
            "request_us_mean": req_mean, "request_us_p99": req_p99,
            "request_off_us_mean": off_mean, "request_off_us_p99": off_p99,
            "stream_chars": answer.chars().count(), "token_chars": 3,
            "token_us_on": on / tokens * 1e6, "token_us_off": off / tokens * 1e6,
            "hold_back_chars": policy.longest() - 1,
        })
    );
    Ok(())
}
