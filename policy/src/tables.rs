//! The built-in character tables: look-alike letters from other scripts, and traditional
//! characters with their simplified forms. Both are deliberately small and conservative: a
//! character is listed only when it has one reading in practice, so folding never turns an
//! ordinary simplified text into something else. A library that needs more adds its own pairs
//! (`[normalise] map` in `policy.toml`), which are signed with the library.

/// Letters of Cyrillic, Greek and other blocks that render like Latin letters, written as
/// `look-alike, Latin` pairs. Compatibility decomposition already folds full-width, circled
/// and mathematical letters; these are the ones it leaves alone.
pub(crate) const HOMOGLYPHS: &str = concat!(
    // Cyrillic lower case (after case folding, upper case arrives here too).
    "аaвbсcдdеeһhіiјjкkмmнhоoпnрpсcтtуyхxѕsԁdԛqԝwүyӏlѐeёeїiђhћh",
    // Greek lower case.
    "αaβbγyεeηnιiκkνvοoρpτtυuχxωwϲcϳjϱpςc",
    // Latin letters from other blocks, and digit-like letters in common use.
    "ıiȷjɑaɡgɩiɪiʏyʟlᴀaᴄcᴅdᴇeᴊjᴋkᴍmᴏoᴘpᴛtᴜuᴠvᴡwᴢz",
);

/// Traditional characters and their simplified forms, written as pairs. Only characters whose
/// simplified form is the same in every reading are listed (so characters such as `乾`, which
/// stays `乾` in some words, and characters that are also simplified forms are left out).
pub(crate) const TRADITIONAL: &str = concat!(
    "們们個个這这來来時时會会說说國国對对學学開开關关問问間间門门發发現现經经過过還还",
    "動动長长種种點点從从體体機机當当實实與与麼么為为後后氣气沒没見见東东車车馬马鳥鸟",
    "魚鱼龍龙書书話话語语讀读寫写認认識识記记設设計计訊讯論论議议請请讓让謝谢講讲證证",
    "評评試试詞词調调談谈變变質质費费買买賣卖貨货資资賽赛贊赞貴贵責责負负財财貧贫購购",
    "錢钱鐵铁銀银鋼钢錯错鍵键鏡镜鐘钟針针銷销鎮镇鎖锁鏈链鍋锅陳陈陽阳陰阴際际隊队階阶",
    "險险隨随雖虽雙双雜杂難难電电頭头題题顯显願愿類类顧顾預预領领風风飛飞飯饭飲饮館馆",
    "鬥斗黨党齊齐歲岁歷历殺杀壓压廠厂廣广應应張张強强彈弹歸归夢梦寶宝審审",
    "寬宽專专將将導导屬属層层岡冈島岛帶带幫帮庫库廳厅親亲觀观視视覺觉規规覽览",
    "軍军轉转輪轮輕轻載载較较輸输辦办農农邊边遠远運运進进遲迟選选遺遗鄉乡醫医",
    "傳传傷伤價价儀仪億亿優优償偿備备務务勝胜勞劳勢势區区協协厲厉參参員员圍围圖图團团",
    "報报場场塊块壞坏聲声處处複复夠够奪夺獎奖婦妇媽妈孫孙憶忆懷怀戰战戲戏擊击據据",
    "擁拥擇择擴扩攝摄敵敌斷断晉晋暫暂曆历條条極极構构槍枪標标樂乐樓楼樣样橋桥檢检權权",
    "歡欢殘残濟济滅灭漢汉潔洁澤泽濃浓灣湾災灾無无煙烟熱热爐炉爭争牆墙犧牺獨独獄狱",
    "環环產产畫画異异瘋疯癡痴盡尽盤盘眾众礎础禮礼禍祸稅税穩稳窮穷競竞筆笔節节範范",
    "築筑簡简糧粮係系紀纪約约紅红級级紙纸組组結结給给絕绝統统絲丝綠绿維维網网線线",
    "編编練练績绩總总織织繼继續续罰罚罷罢聯联聽听職职肅肃脅胁腦脑膽胆臉脸臨临興兴",
    "舉举舊旧艦舰藝艺藥药蘇苏蟲虫衛卫補补製制襲袭討讨訓训託托許许訴诉診诊詐诈",
    "該该詳详誇夸誌志誤误誠诚誰谁課课謀谋謊谎謎谜謹谨譜谱護护讚赞豐丰豬猪貓猫賊贼賭赌",
    "贈赠趕赶跡迹蹤踪躍跃軟软輛辆輩辈辭辞遷迁適适遞递鄰邻釋释鈔钞鉛铅銃铳",
    "鋪铺鍊炼鑽钻閃闪閉闭閱阅闆板闖闯陸陆隱隐雞鸡離离霧雾靈灵韓韩響响頂顶順顺須须頒颁",
    "頻频顏颜額额饑饥餓饿驗验驅驱騙骗騎骑驚惊髒脏鬧闹麗丽黃黄齡龄龜龟",
    "砲炮毆殴擄掳綁绑監监鑰钥匯汇滬沪濱滨燈灯瑣琐礙碍窩窝竊窃",
);

/// Reads a pair table into `(from, to)` pairs; an odd trailing character is a defect in the
/// table above, caught by the unit test.
pub(crate) fn pairs(table: &str) -> impl Iterator<Item = (char, char)> + '_ {
    let chars: Vec<char> = table.chars().collect();
    (0..chars.len() / 2).map(move |i| (chars[2 * i], chars[2 * i + 1])).filter(|(a, b)| a != b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_pairs_and_never_map_a_target_onward() {
        for table in [HOMOGLYPHS, TRADITIONAL] {
            assert_eq!(table.chars().count() % 2, 0, "a table has an unpaired character");
            let map: std::collections::HashMap<char, char> = pairs(table).collect();
            for (from, to) in pairs(table) {
                // A target that is itself folded again would make folding order-dependent.
                assert!(!map.contains_key(&to), "{from} folds to {to}, which folds again");
            }
        }
    }
}
